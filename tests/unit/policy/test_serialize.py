"""ParsedYaml: each content parsed once, handed out as copies, bounded."""

from __future__ import annotations

import pytest
import yaml

from cdr_policy.policy import serialize
from cdr_policy.policy.serialize import ParsedYaml, dump_yaml


def _doc(n: int) -> bytes:
    return dump_yaml({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"c{n}"}, "data": {"k": "v" * 40}})


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    parsed: list[bytes] = []
    real = serialize.load_yaml_documents

    def load(data: str | bytes) -> list[object]:
        parsed.append(data if isinstance(data, bytes) else data.encode())
        return real(data)

    monkeypatch.setattr(serialize, "load_yaml_documents", load)
    return parsed


def test_the_same_content_is_parsed_once_and_each_caller_gets_its_own_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed = _counting(monkeypatch)
    cache = ParsedYaml()
    first = cache.load(_doc(1))
    first[0]["metadata"]["name"] = "changed by a caller"
    second = cache.load(_doc(1))
    assert second == [yaml.safe_load(_doc(1))] and second is not first
    assert parsed == [_doc(1)]
    cache.load(_doc(2))
    assert parsed == [_doc(1), _doc(2)]


def test_it_keeps_at_most_max_bytes_dropping_the_least_recently_used(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed = _counting(monkeypatch)
    size = len(_doc(1))
    cache = ParsedYaml(max_bytes=2 * size, max_file_bytes=size)
    cache.load(_doc(1))
    cache.load(_doc(2))
    cache.load(_doc(1))  # 1 is now the most recently used
    cache.load(_doc(3))  # drops 2
    cache.load(_doc(1))
    cache.load(_doc(2))
    assert parsed == [_doc(1), _doc(2), _doc(3), _doc(2)]


def test_a_file_larger_than_max_file_bytes_is_parsed_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed = _counting(monkeypatch)
    cache = ParsedYaml(max_file_bytes=len(_doc(1)) - 1)
    assert cache.load(_doc(1)) == cache.load(_doc(1))
    assert parsed == [_doc(1), _doc(1)]


def test_a_document_that_does_not_parse_raises_every_time() -> None:
    cache = ParsedYaml()
    for _ in range(2):
        with pytest.raises(yaml.YAMLError):
            cache.load(b"kind: [")


def test_what_a_writer_remembers_is_not_parsed_when_read_back(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed = _counting(monkeypatch)
    cache = ParsedYaml()
    doc = yaml.safe_load(_doc(1))
    cache.remember(_doc(1), [doc])
    doc["metadata"]["name"] = "changed after remembering"
    assert cache.load(_doc(1)) == [yaml.safe_load(_doc(1))]
    assert parsed == []
