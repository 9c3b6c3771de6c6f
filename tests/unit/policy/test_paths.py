"""Paths that mean what they say (issue 11): directory prefixes end with ``/``, the checker flags one
that does not, and files that arrive in a watched directory by rename or link are covered.

Coverage is shown by evaluating the emitted selectors the way Tetragon does (``selectors.md``):
filters inside a selector are ANDed, values inside a string filter ORed, selectors ORed and the
first matching one acts. An event is the string each hook argument resolves to: a ``path`` argument
is the full path of a directory (no trailing ``/``), a ``dentry`` the entry's path within its mount.
"""

from __future__ import annotations

from typing import Any

import pytest

from cdr_policy.policy.behaviours import CATALOGUE
from cdr_policy.policy.channel import Action, ChannelSettings
from cdr_policy.policy.checker import SchemaSet, check_object, errors_of
from cdr_policy.policy.checker.tetragon import KNOWN_DIRECTORIES
from cdr_policy.rules import RULES

from .factories import behaviour, cdr_set, render

_STRING_OPS = {
    "Equal": lambda arg, v: arg == v,
    "Prefix": lambda arg, v: arg.startswith(v),
    "Postfix": lambda arg, v: arg.endswith(v),
}


def _policy(rule: str, action: Action = "Sigkill") -> dict[str, Any]:
    [f] = render([cdr_set(behaviours=[behaviour(rule)])], ChannelSettings(name="prod", action=action)).files
    return f.obj


def _acting(obj: dict[str, Any], call: str, event: dict[int, str]) -> list[str] | None:
    """The actions of the first selector of hook ``call`` that matches ``event`` (None: no match)."""
    [hook] = [kp for kp in obj["spec"]["kprobes"] if kp["call"] == call]
    for sel in hook["selectors"]:
        if all(
            any(_STRING_OPS[m["operator"]](event[m["index"]], v) for v in m["values"]) for m in sel.get("matchArgs", [])
        ):
            return [a["action"] for a in sel["matchActions"]]
    return None


def _rename(old: str, new: str) -> dict[int, str]:
    """security_path_rename(old_dir, old_dentry, new_dir, new_dentry) for ``mv old new``."""
    return {0: old.rsplit("/", 1)[0], 1: old, 2: new.rsplit("/", 1)[0], 3: new}


def _link(target: str, new: str) -> dict[int, str]:
    """security_path_link(old_dentry, new_dir, new_dentry) for ``ln target new``."""
    return {0: target, 1: new.rsplit("/", 1)[0], 2: new}


def _symlink(new: str) -> dict[int, str]:
    """security_path_symlink(dir, dentry, old_name) for ``ln -s anything new``."""
    return {0: new.rsplit("/", 1)[0], 1: new}


# --- directory prefixes end with "/" ----------------------------------------------------------------


def _string_values(obj: dict[str, Any], operators: tuple[str, ...]) -> list[str]:
    found = []
    for kp in obj["spec"]["kprobes"]:
        for sel in kp["selectors"]:
            for m in [*sel.get("matchArgs", []), *sel.get("matchBinaries", [])]:
                if m["operator"] in operators:
                    found.extend(m["values"])
    return found


@pytest.mark.parametrize("rule", sorted(RULES))
def test_every_directory_prefix_ends_with_a_slash(rule: str) -> None:
    for value in _string_values(_policy(rule), ("Prefix", "NotPrefix")):
        assert value.rstrip("/") not in KNOWN_DIRECTORIES or value.endswith("/"), (rule, value)


def test_every_catalogue_directory_is_known_to_the_checker() -> None:
    directories = {
        value.rstrip("/")
        for rule in RULES
        for value in _string_values(_policy(rule), ("Prefix",))
        if value.endswith("/") and not value.startswith("/memfd:")
    }
    assert directories and directories <= KNOWN_DIRECTORIES, directories - KNOWN_DIRECTORIES


def test_the_checker_flags_a_directory_prefix_without_a_slash(schemas: SchemaSet) -> None:
    obj = _policy("log_tampering")
    assert errors_of(check_object(obj, schemas)) == []
    obj["spec"]["kprobes"][0]["selectors"][0]["matchArgs"][0]["values"] = ["/var/log"]
    problems = [p for p in errors_of(check_object(obj, schemas)) if p.code == "tetragon.directory-prefix"]
    assert [p.path for p in problems] == ["spec.kprobes[0].selectors[0].matchArgs[0]"]
    assert "'/var/log' is a directory" in problems[0].message
    # files and unknown directories are not flagged (the rule's limit: it knows listed directories only)
    obj["spec"]["kprobes"][0]["selectors"][0]["matchArgs"][0]["values"] = ["/etc/shadow", "/opt/app"]
    assert "tetragon.directory-prefix" not in {p.code for p in check_object(obj, schemas)}
    # matchBinaries prefixes are checked too
    obj = _policy("ingress_tool_transfer")
    obj["spec"]["kprobes"][0]["selectors"][0]["matchBinaries"] = [{"operator": "Prefix", "values": ["/tmp"]}]
    assert "tetragon.directory-prefix" in {p.code for p in errors_of(check_object(obj, schemas))}


def test_log_prefix_no_longer_matches_a_sibling_directory() -> None:
    obj = _policy("log_tampering")
    assert _acting(obj, "security_path_truncate", {0: "/var/log/syslog"}) == ["Sigkill"]
    assert _acting(obj, "security_path_truncate", {0: "/var/logfoo/syslog"}) is None
    # unlink sees the parent directory: directly in /var/log, below it, not beside it
    assert _acting(obj, "security_path_unlink", {0: "/var/log", 1: "/var/log/auth.log"}) == ["Sigkill"]
    assert _acting(obj, "security_path_unlink", {0: "/var/log/nginx", 1: "/var/log/nginx/a.log"}) == ["Sigkill"]
    assert _acting(obj, "security_path_unlink", {0: "/var/logfoo", 1: "/var/logfoo/x"}) is None
    assert _acting(obj, "security_path_unlink", {0: "/root", 1: "/root/.bash_history"}) == ["Sigkill"]


# --- renames and links into watched directories -------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "covered"),
    [
        (_rename("/tmp/job", "/etc/cron.d/job"), True),
        (_rename("/tmp/x.service", "/etc/systemd/system/x.service"), True),
        (_rename("/tmp/x.service", "/etc/systemd/system/multi-user.target.wants/x.service"), True),
        (_rename("/tmp/c", "/var/spool/cron/crontabs/root"), True),
        (_rename("/tmp/crontab", "/etc/crontab"), True),
        (_rename("/tmp/rc", "/etc/rc.local"), True),
        (_rename("/etc/passwd+", "/etc/passwd"), False),  # everyday renames in /etc are not ours
        (_rename("/tmp/a", "/etc/cron.dfoo/a"), False),
        (_rename("/tmp/a", "/tmp/b"), False),
    ],
)
def test_persistence_covers_renames_into_watched_directories(event: dict[int, str], covered: bool) -> None:
    obj = _policy("persistence_cron")
    assert (_acting(obj, "security_path_rename", event) == ["Sigkill"]) is covered


def test_persistence_covers_links_and_symlinks_into_watched_directories() -> None:
    obj = _policy("persistence_cron")
    assert _acting(obj, "security_path_link", _link("/tmp/job", "/etc/cron.d/job")) == ["Sigkill"]
    assert _acting(obj, "security_path_link", _link("/tmp/c", "/etc/crontab")) == ["Sigkill"]
    assert _acting(obj, "security_path_link", _link("/tmp/a", "/home/a")) is None
    wants = "/etc/systemd/system/multi-user.target.wants/evil.service"
    assert _acting(obj, "security_path_symlink", _symlink(wants)) == ["Sigkill"]
    assert _acting(obj, "security_path_symlink", _symlink("/usr/local/bin/tool")) is None


@pytest.mark.parametrize(
    ("event", "covered"),
    [
        (_rename("/tmp/clean", "/var/log/auth.log"), True),  # a prepared file over a log
        (_rename("/tmp/clean", "/var/log/nginx/access.log"), True),
        (_rename("/var/log/auth.log", "/tmp/auth.log"), True),  # a log moved away
        (_rename("/tmp/empty", "/root/.bash_history"), True),
        (_rename("/tmp/a", "/var/logfoo/a"), False),
        (_rename("/tmp/a", "/tmp/b"), False),
    ],
)
def test_log_tampering_covers_renames(event: dict[int, str], covered: bool) -> None:
    obj = _policy("log_tampering")
    assert (_acting(obj, "security_path_rename", event) == ["Sigkill"]) is covered
    assert (_acting(obj, "security_path_link", _link("/tmp/fake", "/var/log/fake.log")) == ["Sigkill"]) is True


def test_defense_evasion_covers_a_preload_list_moved_or_linked_into_place() -> None:
    obj = _policy("defense_evasion")
    assert _acting(obj, "security_path_rename", _rename("/tmp/p", "/etc/ld.so.preload")) == ["Sigkill"]
    assert _acting(obj, "security_path_link", _link("/tmp/p", "/etc/ld.so.preload")) == ["Sigkill"]
    assert _acting(obj, "security_path_rename", _rename("/tmp/p", "/etc/ld.so.conf")) is None


@pytest.mark.parametrize("rule", ["persistence_cron", "log_tampering"])
def test_rename_hooks_share_the_rules_scope_and_audit_first_mode(schemas: SchemaSet, rule: str) -> None:
    modes: tuple[tuple[Action, str], ...] = (("Post", "monitor"), ("Sigkill", "enforce"), ("Override", "enforce"))
    for action, mode in modes:
        obj = _policy(rule, action)
        assert errors_of(check_object(obj, schemas)) == []
        assert obj["spec"]["podSelector"] == {}  # the rule's one object: the same scope for every hook
        options = {o["name"]: o["value"] for o in obj["spec"]["options"]}
        assert options["policy-mode"] == mode
        event = _rename("/tmp/x", "/var/log/x") if rule == "log_tampering" else _rename("/tmp/x", "/etc/cron.d/x")
        expected = {"Post": "Post", "Sigkill": "Sigkill", "Override": "Override"}[action]
        assert _acting(obj, "security_path_rename", event) == [expected]
        if action == "Override":  # fmod_ret on security_* hooks: no override helper needed
            assert options["disable-kprobe-multi"] == "1"
    assert not CATALOGUE[rule].start_in_monitor
