"""Reading the operator's configuration text (channel settings, feed lists, category mappings),
from files or from the state store: UTF-8 only, one YAML document, clear one-line errors that name
where the text came from and never quote it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cdr_policy.errors import ConfigError


def read_text_file(path: str | Path, what: str) -> str:
    """The UTF-8 text of ``path`` (``what`` names it in errors, e.g. "feed list")."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    return decode_text(data, str(path))


def decode_text(data: bytes, origin: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{origin}: not UTF-8 text (byte {exc.start})") from exc


def load_yaml_mapping(text: str, origin: str, expected: str) -> dict[str, Any]:
    """The one YAML (or JSON) document of ``text``, which must be a mapping (``expected`` describes it)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{origin}: not valid YAML{where}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{origin}: expected {expected}")
    return doc
