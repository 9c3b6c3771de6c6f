"""The behaviour rules: the shared vocabulary between the category mapping (``data/categories.yaml``,
which maps Qualys CDR categories to a rule id) and the Tetragon compiler (which turns each rule id
into a TracingPolicy). Every id here must have both a mapping entry and a compiler; tests check both.
"""

from __future__ import annotations

# rule id -> (MITRE technique, one-line summary of what the generated policy restricts)
RULES: dict[str, tuple[str, str]] = {
    "cloud_credentials": ("T1552.005", "network utilities may not reach the instance metadata service"),
    "network_scanning": ("T1046", "scanner binaries may not run; raw sockets are refused"),
    "container_escape": ("T1611", "unshare/setns into new namespaces refused from pods"),
    "crypto_mining": ("T1496", "miner binaries may not run; mining-pool ports are refused"),
    "reverse_shell": ("T1059.004", "netcat-style tools may not run; shells may not connect out"),
    "privilege_escalation": ("T1548", "setuid(0) from non-root pod processes is refused"),
    "kernel_module": ("T1547.006", "module loading and module tools are refused in pods"),
    "log_tampering": ("T1070.002", "log files may not be truncated or unlinked"),
    "credential_access": ("T1552.001", "credential files (shadow, SSH keys, tokens) guarded"),
    "persistence_cron": ("T1053.003", "cron and systemd unit files may not be written"),
    "lateral_movement": ("T1021.004", "ssh/scp/sftp/rsync clients may not run in pods"),
    "ingress_tool_transfer": ("T1105", "remote file copy tools may not run in pods"),
    "exfiltration": ("T1041", "staging/transfer tools may not run; FTP/TFTP/rsync ports refused"),
    "webshell": ("T1505.003", "web servers may not spawn shells or interpreters"),
    "account_manipulation": ("T1098", "password and account modification tools refused"),
    "account_creation": ("T1136", "account creation tools refused"),
    "container_admin": ("T1609", "container and cluster admin tools may not run in pods"),
    "process_injection": ("T1055", "ptrace and debuggers refused in pods"),
    "network_sniffing": ("T1040", "packet capture tools may not run; raw sockets refused"),
    "package_management": ("T1072", "package managers may not run in running containers"),
    "defense_evasion": ("T1562.001", "process hiding, masquerading and security-tool killing refused"),
    "proxy_tunneling": ("T1572", "tunnelling tools may not run in pods"),
    "fileless_execution": ("T1620", "execution from memfd / deleted files refused"),
    "data_destruction": ("T1485", "secure-delete tools refused"),
    "inhibit_recovery": ("T1490", "volume and backup destruction tools refused"),
    "discovery": ("T1069", "account and permission discovery tools audited"),
    "suspicious_communication": ("T1071", "connections to well-known backdoor ports refused"),
}
