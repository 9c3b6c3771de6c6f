"""The lock files: every package pinned with its hashes, the layer's choices in the layer's lock, the
layer's versions in the development lock, every dependency pyproject.toml names locked at a version it
accepts, and the virtualenv the tests run in holding exactly the locked versions (``make`` installs
them with ``--require-hashes``; a stale .venv is named here, not found by a different ``make lint``)."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
LAYER_IN = REPO / "layers/shared/requirements.in"
LAYER_LOCK = REPO / "layers/shared/requirements.txt"
DEV_LOCK = REPO / "requirements-dev.txt"
TOOLS_IN = REPO / "requirements-tools.in"
TOOLS_LOCK = REPO / "requirements-tools.txt"
LOCKS = (LAYER_LOCK, DEV_LOCK, TOOLS_LOCK)

_ENTRY = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)\s*(?:;(?P<marker>[^\\]+))?\\$")
_HASH = re.compile(r"^\s+--hash=sha256:[0-9a-f]{64}(?: \\)?$")


class Locked:
    def __init__(self, name: str, version: str, marker: str | None, hashes: int) -> None:
        self.name, self.version, self.hashes = canonicalize_name(name), version, hashes
        self.marker = Marker(marker.strip()) if marker else None

    def applies(self) -> bool:
        return self.marker is None or self.marker.evaluate()


def read_lock(path: Path) -> list[Locked]:
    """Each entry of a lock (``name==version [; marker] \\`` then its ``--hash`` lines); anything else
    that is not a comment is an error."""
    entries: list[Locked] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if _HASH.match(line):
            assert entries, f"{path.name}:{number}: a hash before any package"
            entries[-1].hashes += 1
            continue
        match = _ENTRY.match(line)
        assert match, f"{path.name}:{number}: not a pinned requirement with hashes"
        entries.append(Locked(match["name"], match["version"], match["marker"], 0))
    return entries


def by_name(path: Path) -> dict[str, list[Locked]]:
    entries: dict[str, list[Locked]] = {}
    for entry in read_lock(path):
        entries.setdefault(entry.name, []).append(entry)
    return entries


def chosen(path: Path) -> list[Requirement]:
    return [Requirement(line) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(text) for text in project["dependencies"] + project["optional-dependencies"]["dev"]]


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_locked_package_is_pinned_with_its_hashes(lock: Path) -> None:
    entries = read_lock(lock)
    assert entries
    assert [e.name for e in entries if e.hashes == 0] == []


@pytest.mark.parametrize(("source", "lock"), [(LAYER_IN, LAYER_LOCK), (TOOLS_IN, TOOLS_LOCK)], ids=["layer", "tools"])
def test_what_we_choose_is_what_is_locked(source: Path, lock: Path) -> None:
    locked = by_name(lock)
    for requirement in chosen(source):
        versions = {e.version for e in locked.get(canonicalize_name(requirement.name), [])}
        assert versions, f"{requirement.name} is not in {lock.name}: run make lock"
        assert all(requirement.specifier.contains(v, prereleases=True) for v in versions), requirement


def test_the_development_lock_runs_the_layers_versions() -> None:
    dev = by_name(DEV_LOCK)
    for name, entries in by_name(LAYER_LOCK).items():
        assert {e.version for e in dev.get(name, [])} == {e.version for e in entries}, name


def test_every_dependency_pyproject_names_is_locked_at_a_version_it_accepts() -> None:
    dev = by_name(DEV_LOCK)
    for requirement in pyproject_requirements():
        versions = {e.version for e in dev.get(canonicalize_name(requirement.name), []) if e.applies()}
        assert versions, f"{requirement.name} is not in requirements-dev.txt: run make lock"
        assert all(requirement.specifier.contains(v, prereleases=True) for v in versions), requirement


def test_the_virtualenv_holds_exactly_the_locked_versions() -> None:
    stale = {}
    for name, entries in by_name(DEV_LOCK).items():
        wanted = {e.version for e in entries if e.applies()}
        if not wanted:
            continue
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = "missing"
        if installed not in wanted:
            stale[name] = (installed, sorted(wanted))
    assert stale == {}, "this environment is not the lock's: make venv (rm -r .venv first) installs it"
