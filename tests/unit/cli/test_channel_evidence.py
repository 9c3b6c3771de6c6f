"""``cdr-policy channel evidence`` on what it cannot use: a channel without a promotion report, and a
report that is not one (not JSON, the wrong shape, deeply nested, oversized). Each is one error line
naming the report, never its content and never a traceback; the reports of promoting channels
themselves are tests/unit/functions/test_promotion.py's subject."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdr_policy import layout
from cdr_policy.cli import main
from cdr_policy.promotion.decisions import MAX_DOCUMENT_BYTES

SECRET = "payments-db-password-do-not-print"


def evidence(dist: str | Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    code = main(["channel", "evidence", "prod", f"--dist={dist}", *extra], {})
    out, err = capsys.readouterr()
    return code, out, err


def test_a_channel_without_a_report_is_named_with_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = evidence(tmp_path, capsys)
    assert code != 0 and out == ""
    assert err.strip() == (
        f"cdr-policy: error: channel prod has no promotion report in {tmp_path} (it does not promote, or "
        "Publish has not run for it since it does)"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (f'{{"channel": "prod", "{SECRET}": '.encode(), "is not a promotion decision"),
        (f'{{"channel": "prod", "note": "{SECRET}"}}'.encode(), "is not a promotion decision"),
        (b"[" * 100_000 + b"]" * 100_000, "is not a promotion decision"),
        (b" " * (MAX_DOCUMENT_BYTES + 1), "larger than"),
    ],
    ids=["not JSON", "not the schema", "deeply nested", "oversized"],
)
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_a_report_that_is_not_one_is_one_error_line(
    content: bytes, message: str, as_json: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / layout.promotion_report_key("prod")
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    code, out, err = evidence(tmp_path, capsys, *(["--json"] if as_json else []))
    assert code != 0 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("cdr-policy: error: ") and message in line, line
    assert SECRET not in err and "Traceback" not in err
