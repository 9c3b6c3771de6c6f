"""The category mapping: complete against rules.py, one test per rule family, matching order, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdr_policy.errors import ConfigError
from cdr_policy.qualys.categories import CategoryMapping, load_mapping, normalise_category, parse_mapping
from cdr_policy.rules import RULES


def test_every_rule_is_reachable_and_every_target_is_a_rule(mapping: CategoryMapping) -> None:
    # load_mapping already refused unknown rule ids; here: nothing in RULES is left without a mapping.
    assert mapping.reachable_rules() == set(RULES)


@pytest.mark.parametrize(
    "category, rule",
    [
        # seen from a live tenant
        ("Cloud_Credentials_Accessed_By_Network_Utility", "cloud_credentials"),
        ("Network_Scanning_Utility", "network_scanning"),
        # the original operator's table (§11.3) through its substrings
        ("Cloud_Credentials_Accessed", "cloud_credentials"),
        ("Container_Escape_Attempt", "container_escape"),
        ("Privilege_Escalation_Attempt", "privilege_escalation"),
        ("Crypto_Mining_Activity", "crypto_mining"),
        ("Reverse_Shell_Execution", "reverse_shell"),
        ("Suspicious_Communication_Detected", "suspicious_communication"),
        ("Sensitive_File_Access", "credential_access"),
        ("Credential_File_Read", "credential_access"),
        ("Persistence_Cron_Job", "persistence_cron"),
        ("Cron_Modified", "persistence_cron"),
        ("Log_Tampering_Defense_Evasion", "log_tampering"),
        ("Defense_Evasion_Generic", "defense_evasion"),
        ("Lateral_Movement_SSH", "lateral_movement"),
        ("Outbound_SSH_Session", "lateral_movement"),
        ("Data_Exfiltration_Staging", "exfiltration"),
        ("Data_Staging_Detected", "exfiltration"),
        ("Webshell_Execution", "webshell"),
        ("Kernel_Module_Loading", "kernel_module"),
        ("Account_Manipulation", "account_manipulation"),
        ("User_Modification", "account_manipulation"),
        ("Account_Creation", "account_creation"),
        ("User_Creation", "account_creation"),
        ("Container_Build_In_Pod", "container_admin"),
        ("Image_Build", "container_admin"),
        ("Data_Destruction", "data_destruction"),
        ("File_Deletion_Mass", "data_destruction"),
        ("System_Recovery_Inhibited", "inhibit_recovery"),
        ("Backup_Deletion", "inhibit_recovery"),
        ("Group_Discovery", "discovery"),
        ("Permission_Enumeration", "discovery"),
        ("Remote_Services_Access", "lateral_movement"),
        ("RDP_Client", "lateral_movement"),
        ("VNC_Client", "lateral_movement"),
        ("Deploy_Container", "container_admin"),
        ("Admin_Command", "container_admin"),
        ("Kubectl_Exec", "container_admin"),
        # Qualys CRS rule families (§8.3), with their MITRE suffixes
        ("Exploit_vsftpd_T1190", "webshell"),
        ("Credential_access_bash_history_T1552_003", "credential_access"),
        ("Cloud_Credentials_accessed_by_network_utility_T1552_005", "cloud_credentials"),
        ("Find_AWS_Credentials_T1552_001", "credential_access"),
        ("Search_Private_Keys_or_Passwords_T1552_001", "credential_access"),
        ("CryptoMiner_Execution_T1496", "crypto_mining"),
        ("Netcat_Reverse_Shell_Execution_T1059_004", "reverse_shell"),
        ("Interactive_shell_spawned_in_container_T1609", "container_admin"),
        ("Python_executed_with_suspicious_arguments_T1059_006", "reverse_shell"),
        ("Process_exec_from_memory_T1106", "fileless_execution"),
        ("ContainerDrift_Via_File_Creation_and_Execution_T1059_004", "ingress_tool_transfer"),
        ("Container_escape_via_cgroup_T1611", "container_escape"),
        ("Container_escape_using_runtime_socket_T1611", "container_escape"),
        ("Container_escape_using_docker_socket_T1611", "container_escape"),
        ("Debugfs_Launched_in_Privileged_Container_T1611", "container_escape"),
        ("Network_scanning_utility_T1046", "network_scanning"),
        ("Network_utility_executed_T1016", "discovery"),
        ("Process_Capability_Enumeration_T1057", "discovery"),
        ("Privilege_Escalation_Via_SUID_Binary_Execution_T1548_001", "privilege_escalation"),
        ("Sudo_Potential_Privilege_Escalation_T1548_003", "privilege_escalation"),
        ("Polkit_Local_Privilege_Escalation_T1068", "privilege_escalation"),
        ("CAP_SYS_ADMIN_Assigned_to_Binary", "privilege_escalation"),
        ("Privilege_Escalation_via_GDB_CAP_SYS_PTRACE_T1055_T1068", "process_injection"),
        ("Insmod_Executed_In_Container_T1014", "kernel_module"),
        ("Clear_System_Logs_T1070_002", "log_tampering"),
        ("Process_hiding_T1564", "defense_evasion"),
        ("Process_hidden_using_mount_hidepid_T1564", "defense_evasion"),
        ("Defense_Evasion_Via_Masquerading_T1036_003", "defense_evasion"),
        ("Defense_Evasion_via_Rootkit_T1222_002", "defense_evasion"),
        ("Usage_of_Steganografy_tools_T1027_003", "defense_evasion"),
        ("Stop_antimalware_process_T1562_001", "defense_evasion"),
        ("Compiler_executed_in_container_T1027_004", "package_management"),
        ("Curl_Using_Socks_Proxy_T1572", "proxy_tunneling"),
        ("Schedule_Cron_Jobs_T1053_003", "persistence_cron"),
        ("Local_account_password_modified_T1098_007", "account_manipulation"),
        ("Kubernetes_service_account_token_created_in_container_T1609", "container_admin"),
        ("Launch_Remote_File_Copy_Tools_in_Container_T1021", "lateral_movement"),
        ("Launch_Ingress_Remote_File_Copy_Tools_in_Container_T1105", "ingress_tool_transfer"),
        ("Container_management_utility_in_container_T1609", "container_admin"),
        ("Package_Management_Process_in_Container_T1505", "package_management"),
        ("Collection_Via_Automated_Collection_T1119", "exfiltration"),
        ("Network_Traffic_Capture_via_CAP_NET_RAW_T1040", "network_sniffing"),
        ("GDB_Executed_In_Container_T1055", "process_injection"),
        ("DB_program_spawned_process_T1210", "webshell"),
        ("Execution_Via_Command_Line_Interface_T1059_004", "reverse_shell"),
        ("Potential_Privilege_Escalation_via_Enlightenment_T1068", "privilege_escalation"),
        ("Potential_Privilege_Escalation_via_Linux_DAC_permissions_T1068", "privilege_escalation"),
        ("Privilege_Escalation_via_CAP_CHOWN_CAP_FOWNER_Capabilities_T1068", "privilege_escalation"),
        ("Privilege_Escalation_Via_Process_Capabilities_T1548", "privilege_escalation"),
        # CRS testbed slugs (§8.3 corroboration)
        ("create-symlink-or-hardlink-over-sensitive-files", "credential_access"),
        ("dind-escape-attempt-using-sock", "container_escape"),
        ("dump-memory-for-credentials", "credential_access"),
        ("k8s-printenv-execution", "credential_access"),
        ("reconnaissance-attempt-to-find-suid-binaries", "discovery"),
        # names in public code (§8.2)
        ("Container_Escape", "container_escape"),
        ("Privilege_Escalation", "privilege_escalation"),
        ("Crypto_Mining", "crypto_mining"),
        ("Reverse_Shell", "reverse_shell"),
        ("Networking_Suspicious_Communication", "suspicious_communication"),
        ("Networking_C2_Communication", "suspicious_communication"),
        ("Credential_Access", "credential_access"),
        ("Bitcoin_Pool_Connection", "crypto_mining"),
        ("Backdoor_Port_Open", "suspicious_communication"),
        ("Trojan_C2_Beacon", "suspicious_communication"),
    ],
)
def test_rule_families(mapping: CategoryMapping, category: str, rule: str) -> None:
    assert mapping.rule_for(category) == rule


@pytest.mark.parametrize(
    "variant",
    [
        "CryptoMiner_Execution",
        "cryptominer_execution",
        "CRYPTOMINER-EXECUTION",
        "CryptoMiner Execution",
        "Cryptominer_Execution_T1496",
        "cryptominer_execution_t1496",
        "CryptoMinerExecution",
        " CryptoMiner_Execution. ",
    ],
)
def test_case_separator_and_suffix_insensitive(mapping: CategoryMapping, variant: str) -> None:
    m = mapping.match(variant)
    assert m is not None and (m.rule, m.kind) == ("crypto_mining", "exact")


@pytest.mark.parametrize(
    "name, normalised",
    [
        ("Container_escape_via_cgroup_T1611", "container_escape_via_cgroup"),
        ("Local_account_password_modified_T1098_007", "local_account_password_modified"),
        (
            "Privilege_Escalation_via_GDB_CAP_SYS_PTRACE_T1055_T1068",
            "privilege_escalation_via_gdb_cap_sys_ptrace",
        ),
        ("Sudo-Potential Privilege.Escalation_T1548.003", "sudo_potential_privilege_escalation"),
        ("T1046", "t1046"),  # a bare id is a name, not a suffix
        ("Port_8443_Open", "port_8443_open"),
    ],
)
def test_normalise(name: str, normalised: str) -> None:
    assert normalise_category(name) == normalised


def test_substrings_are_word_aligned_and_ordered(mapping: CategoryMapping) -> None:
    assert mapping.match("Wordpress_Exploit") is None  # "rdp" is not a word of it
    assert mapping.match("Sshd_Config_Read") is None  # nor is "ssh"
    brute = mapping.match("SSH_Password_Brute_Force")
    assert brute is not None and brute.rule is None and brute.pattern == "brute_force"  # not lateral_movement
    key = mapping.match("Stolen_SSH_Key_Used")
    assert key is not None and key.rule == "credential_access"
    log = mapping.match("Log_Tampering_Defense_Evasion")
    assert log is not None and log.rule == "log_tampering" and log.kind == "substring"


def _rule(mapping: CategoryMapping, category: str, techniques: list[str]) -> str | None:
    """The rule of a category that the mapping matches."""
    m = mapping.match(category, techniques)
    assert m is not None
    return m.rule


def test_technique_fallback(mapping: CategoryMapping) -> None:
    assert _rule(mapping, "Unknown_Thing", ["T1611"]) == "container_escape"
    m = mapping.match("Unknown_Thing", ["T1548.001"])
    assert m is not None and (m.rule, m.kind, m.pattern) == ("privilege_escalation", "technique", "T1548")
    assert mapping.match("Unknown_Thing", ["T9999"]) is None
    assert mapping.match("Unknown_Thing", ["T1059"]) is None  # generic scripting: too broad to map
    # a known category wins over its techniques
    assert _rule(mapping, "Network_Scanning_Utility", ["T1611"]) == "network_scanning"
    # a deliberate "no policy" also wins over techniques
    assert _rule(mapping, "SSH_Brute_Force", ["T1021.004"]) is None


def test_unknown_category(mapping: CategoryMapping) -> None:
    assert mapping.match("Suspicious_Unlisted_Activity") is None
    assert mapping.rule_for("Suspicious_Unlisted_Activity") is None


USER_FILE = """
version: 1
exact:
  - name: Our_Own_Detection
    rule: crypto_mining
    why: our SOC's miner rule
substrings:
  - contains: beacon
    rule: suspicious_communication
    why: our beacon detections
techniques:
  - id: t1611
    rule: container_escape
    why: escape to host
"""


def test_user_mapping_replaces_the_shipped_one(tmp_path: Path) -> None:
    path = tmp_path / "categories.yaml"
    path.write_text(USER_FILE)
    mapping = load_mapping(str(path))
    assert mapping.source == str(path)
    assert mapping.rule_for("our-own-detection_T1496") == "crypto_mining"
    assert mapping.rule_for("DNS_Beacon_Seen") == "suspicious_communication"
    assert mapping.rule_for("X", ["T1611.001"]) == "container_escape"
    assert mapping.rule_for("Network_Scanning_Utility") is None
    assert load_mapping() is load_mapping(None)  # the shipped one is parsed once


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "version: 1\nexact:\n  - name: A\n    rule: nope\n    why: x\n",
            "rule 'nope' is not a known rule id",
        ),
        ("version: 1\nexact:\n  - name: A\n    rule: crypto_mining\n", "'why' must be a one-line rationale"),
        (
            "version: 1\nexact:\n  - name: A\n    rule: crypto_mining\n    why: |\n      two\n      lines\n",
            "one-line rationale",
        ),
        ("version: 1\nexact:\n  - name: A\n    why: x\n", "'rule' is required"),
        (
            "version: 1\nexact:\n  - name: Foo_Bar\n    rule: crypto_mining\n    why: x\n"
            "  - name: foo-bar_T1496\n    rule: crypto_mining\n    why: y\n",
            "are the same category",
        ),
        (
            "version: 1\nsubstrings:\n  - contains: a\n    rule: null\n    why: x\n"
            "  - contains: A\n    rule: null\n    why: y\n",
            "listed twice",
        ),
        (
            "version: 1\ntechniques:\n  - id: 1611\n    rule: container_escape\n    why: x\n",
            "must be a non-empty string",
        ),
        ("version: 1\ntechniques:\n  - id: T16\n    rule: container_escape\n    why: x\n", "not like T1234"),
        (
            "version: 1\nexact:\n  - name: A\n    rule: crypto_mining\n    why: x\n    extra: 1\n",
            "unknown key",
        ),
        ("version: 1\nextras: []\n", "unknown section"),
        ("version: 2\n", "unsupported version"),
        ("exact: [\n", "not valid YAML"),
        ("- a\n- b\n", "expected a mapping"),
        ("version: 1\nexact: {}\n", "'exact' must be a list"),
        ("version: 1\nexact:\n  - just a string\n", "must be a mapping"),
        ("version: 1\nexact:\n  - name: '___'\n    rule: null\n    why: x\n", "empty once normalised"),
    ],
)
def test_invalid_mapping_files(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_mapping(text, "test.yaml")


def test_missing_user_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read category mapping"):
        load_mapping(str(tmp_path / "absent.yaml"))
