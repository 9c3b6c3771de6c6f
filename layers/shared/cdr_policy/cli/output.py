"""The ``--output`` folder, replaced as a whole: a run builds its policies and ``report.json`` in a
folder beside it and swaps it in at the end, so an interrupted run (Ctrl-C, a full disk, a crash)
leaves the previous complete set, never half of a new one that ``kubectl apply -f`` would apply.

Files in the folder that are not ours (not a policy we generated, not ``report.json``) are carried
over into the new set. The swap is two renames; a run interrupted between them finds the previous
set under ``.<name>.previous`` and puts it back before it starts.

A folder that is a mount point (a pod's ``emptyDir``, as the CronJob of deploy/cronjob mounts at
``/policies`` under a read-only root) cannot be renamed, and its parent is usually not writable: it is
filled in place, each file written beside its name and renamed over it, then the policies of ours that
the new set no longer holds removed. An interrupted run can leave a mix there (a pod's folder lives as
long as its one run).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from cdr_policy import layout
from cdr_policy.errors import CdrPolicyError, ConfigError, StorageError, os_cause
from cdr_policy.policy import naming
from cdr_policy.policy.serialize import load_yaml_documents
from cdr_policy.storage import writable_dir


def _sibling(output: Path, what: str) -> Path:
    return output.parent / f".{output.name}.{what}"


def _mount_point(output: Path) -> bool:
    return output.is_dir() and os.path.ismount(output)


def check_output(output: Path) -> Path:
    """Before any request: ``output`` can be replaced (it is a folder or absent, its parent writable), or
    filled in place (a mount point we can write to)."""
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} is a file, not a folder")
    if _mount_point(output):
        writable_dir(output, "--output")
        return output
    writable_dir(output.parent if output.parent != Path("") else Path("."), "--output's parent")
    restore_interrupted(output)
    return output


def restore_interrupted(output: Path) -> None:
    previous = _sibling(output, "previous")
    if previous.is_dir():
        if output.exists():
            shutil.rmtree(previous)
        else:
            previous.rename(output)


def replace_output(output: Path, files: Mapping[str, bytes]) -> None:
    """Make ``files`` (name → bytes) the content of ``output``, all at once (file by file in a mount point).
    StorageError when the new set cannot be written (a full disk): what was built of it is removed,
    ``output`` is as it was."""
    if _mount_point(output):
        _fill_in_place(output, files)
        return
    new, previous = _sibling(output, "new"), _sibling(output, "previous")
    try:
        shutil.rmtree(new, ignore_errors=True)
        new.mkdir()
        if output.is_dir():
            for entry in sorted(output.iterdir()):
                if entry.name in files or entry.name == layout.REPORT_FILE or _ours(entry):
                    continue
                if entry.is_dir():
                    shutil.copytree(entry, new / entry.name, symlinks=True)
                else:
                    shutil.copy2(entry, new / entry.name, follow_symlinks=False)
        for name, data in sorted(files.items()):
            (new / name).write_bytes(data)
    except OSError as exc:  # shutil.Error (a copy failed) included
        shutil.rmtree(new, ignore_errors=True)
        cause = os_cause(exc) if exc.strerror else str(exc)
        raise StorageError(f"cannot write the new policies beside {output} ({cause}); {output} is unchanged") from exc
    if output.exists():
        output.rename(previous)
    new.rename(output)
    shutil.rmtree(previous, ignore_errors=True)


def _fill_in_place(output: Path, files: Mapping[str, bytes]) -> None:
    """Each file written beside itself, then renamed over it; a file that cannot be written (a full disk)
    leaves the ones before it replaced and the rest as they were."""
    for name, data in sorted(files.items()):
        staged = output / f".{name}.new"
        try:
            staged.write_bytes(data)
        except OSError as exc:
            staged.unlink(missing_ok=True)
            raise StorageError(f"cannot write {name} in {output} ({os_cause(exc)})") from exc
        staged.rename(output / name)
    for entry in sorted(output.iterdir()):
        if entry.name not in files and (entry.name == layout.REPORT_FILE or _ours(entry)):
            entry.unlink()


def _ours(path: Path) -> bool:
    """A YAML file holding one object we generated (by its managed-by label)."""
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        return False
    try:
        docs = load_yaml_documents(path.read_bytes())
    except (OSError, CdrPolicyError, ValueError):
        return False
    return (
        len(docs) == 1
        and isinstance(docs[0], dict)
        and (docs[0].get("metadata", {}).get("labels", {}).get(naming.MANAGED_BY_KEY) == naming.MANAGED_BY)
    )
