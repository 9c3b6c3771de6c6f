"""The security review users run on the template: checkov (from its own virtualenv, ``make tools``) with
0 failed checks, and every skipped check argued in the template, for a check this project reviewed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.infra.support import REPO, checkov

pytestmark = pytest.mark.infra

# The only exceptions reviewed so far, by resource type (and, for CKV_AWS_18, by resource): a new skip
# must be argued in the template *and* added here.
REVIEWED_SKIPS = {
    "AWS::Serverless::Function": {"CKV_AWS_116", "CKV_AWS_117", "CKV_AWS_173"},
    "AWS::Logs::LogGroup": {"CKV_AWS_158"},
    "AWS::SQS::Queue": {"CKV_AWS_27"},
    "AWS::DynamoDB::Table": {"CKV_AWS_119"},
    "AWS::S3::Bucket": {"CKV_AWS_18"},
}
ONLY_ON = {"CKV_AWS_18": {"AccessLogBucket"}}


def skips_in(template: dict[str, Any]) -> dict[tuple[str, str], str]:
    """``{(logical id, check id): comment}`` of every ``Metadata.checkov.skip`` entry."""
    found = {}
    for logical, resource in template["Resources"].items():
        for entry in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
            assert set(entry) == {"id", "comment"}, (logical, entry)
            found[(logical, entry["id"])] = entry["comment"]
    return found


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    return checkov(REPO / "template.yaml")


def test_checkov_finds_nothing_failed(report: dict[str, Any], template: dict[str, Any]) -> None:
    summary = report["summary"]
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == [] and summary["failed"] == 0
    # It did look at the whole template: every resource, and a real number of passing checks.
    assert summary["resource_count"] == len(template["Resources"])
    assert summary["passed"] >= 40


def test_every_skip_is_argued_in_the_template_and_reviewed(report: dict[str, Any], template: dict[str, Any]) -> None:
    skips = skips_in(template)
    reported = {
        (c["resource"].split(".", 1)[1], c["check_id"]): c["check_result"]["suppress_comment"]
        for c in report["results"]["skipped_checks"]
    }
    assert reported == skips, "checkov skipped exactly what the template says, with its comment"
    for (logical, check), comment in skips.items():
        resource_type = template["Resources"][logical]["Type"]
        assert check in REVIEWED_SKIPS.get(resource_type, set()), f"{logical}: {check} is not a reviewed exception"
        assert logical in ONLY_ON.get(check, {logical}), f"{logical}: {check} is reviewed only for {ONLY_ON[check]}"
        # A reason, not a placeholder: a sentence that says what holds instead.
        assert len(comment.split()) >= 12, (logical, check, comment)


def test_the_queues_skip_encryption_only_because_they_use_sse_sqs(template: dict[str, Any]) -> None:
    for (logical, check), _comment in skips_in(template).items():
        props = template["Resources"][logical]["Properties"]
        if check == "CKV_AWS_27":
            assert props["SqsManagedSseEnabled"] is True, logical
        if check in {"CKV_AWS_158", "CKV_AWS_119"}:
            # The customer-managed key is there, behind UseCustomerManagedKey: the skip is about the default.
            key = props.get("KmsKeyId") or props["SSESpecification"]["KMSMasterKeyId"]
            assert key == {"Fn::If": ["HasDataKey", {"Fn::GetAtt": ["DataKey", "Arn"]}, {"Ref": "AWS::NoValue"}]}


def test_the_template_cloudformation_receives_passes_too(
    translated: dict[str, Any], template: dict[str, Any], tmp_path: Path
) -> None:
    """After the SAM transform (roles, event source mappings, invoke configs): still 0 failed, and the only
    skips are the ones argued in the template, carried over to the generated functions."""
    path = tmp_path / "translated.json"
    path.write_text(json.dumps(translated))
    translated_report = checkov(path)
    assert translated_report["summary"]["failed"] == 0, [
        (c["check_id"], c["resource"]) for c in translated_report["results"]["failed_checks"]
    ]
    assert translated_report["summary"]["resource_count"] == len(translated["Resources"])
    skipped = {(c["resource"].split(".", 1)[1], c["check_id"]) for c in translated_report["results"]["skipped_checks"]}
    assert skipped == set(skips_in(template))


def test_checkov_catches_a_regression(tmp_path: Path) -> None:
    """The scan can fail: drop the state bucket's access logging and one argued skip from a copy."""
    text = (REPO / "template.yaml").read_text()
    logging = (
        "      LoggingConfiguration:\n"
        "        DestinationBucketName: !Ref AccessLogBucket\n"
        "        LogFilePrefix: state/\n"
    )
    assert text.count(logging) == 1
    text = text.replace(logging, "")
    start = text.index("  RenderQueue:\n")
    skip_start = text.index("    Metadata:\n", start)
    skip_end = text.index("    Properties:\n", skip_start)
    text = text[:skip_start] + text[skip_end:]
    copy = tmp_path / "template.yaml"
    copy.write_text(text)
    failed = {  # checkov() also asserts that the copy parsed
        (c["check_id"], c["resource"]) for c in checkov(copy)["results"]["failed_checks"]
    }
    assert failed == {("CKV_AWS_18", "AWS::S3::Bucket.StateBucket"), ("CKV_AWS_27", "AWS::SQS::Queue.RenderQueue")}
