"""Which executable names evidence may turn into enforcement, and where: the one list.

CDR findings name the process they saw (``processName``). A behaviour rule adds such a name to
what it blocks (``policy.behaviours``), but miners and implants masquerade under exactly the names
of the programs a cluster runs: a rule that kills ``/nginx`` in every pod takes the fleet down.
Two lists decide:

- :data:`SPARED` and the interpreter pattern: shells, interpreters, runtimes, init systems, node
  agents and everyday utilities. Never enforced on evidence at all (not even in the one workload
  where they were seen: ``kubectl exec``, probes and entrypoints run them).
- :data:`COMMON_PROGRAMS` and the kernel-thread pattern: servers, proxies, databases, service
  meshes, node and observability agents, Kubernetes components, the usual entrypoint names and
  kernel threads. Never enforced cluster-wide on evidence; a rule may still enforce them in the
  workloads where they were detected (``policy.scoping``).

:func:`refuse_cluster_wide` says why a name may never be a cluster-wide kill target, whoever asks
(the compiler here; the admission of what reaches a cluster judges every object with it).
``tests/unit/policy/data/images.yaml`` holds the main binaries of the images users run; every one
of them must be refused, and every name a rule blocks by itself must pass.

Names are compared lower-case and without a trailing version (``php-fpm8.2``, ``kswapd0``,
``postgres15`` are ``php-fpm``, ``kswapd``, ``postgres``); a path (``/usr/sbin/nginx``) or a
``Postfix`` value (``/nginx``) is reduced to its last component first.
"""

from __future__ import annotations

import re

# A bare executable name: what a Postfix match on ``/<name>`` can safely carry.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,62}$")
_VERSION_SUFFIX = re.compile(r"[-_.]?\d+(?:\.\d+)*$")
INTERPRETER = re.compile(
    r"^(python|perl|ruby|php|node|nodejs|java|lua|luajit|pypy|deno|bun|dotnet|mono|erl|elixir|julia|rscript|pwsh"
    r"|tclsh|dart)[\d.]*$"
)
# Kernel threads (``ps`` shows them in brackets; a process with such a name in a container is a masquerade).
KERNEL_THREAD = re.compile(
    r"^(kworker|ksoftirqd|kthreadd|kswapd|kcompactd|khugepaged|ksmd|kauditd|kblockd|kdevtmpfs|khungtaskd"
    r"|kintegrityd|kthrotld|kstrp|oom_reaper|writeback|watchdog|watchdogd|migration|cpuhp|idle_inject"
    r"|rcu_[a-z_]+|jbd2|xfsaild|xfs[-_][a-z_]+|ext4-rsv-conver|scsi_eh|scsi_tmf|irq|nvme[-_][a-z_]+"
    r"|mm_percpu_wq|netns|kpsmoused|edac-poller|zswap[-_a-z]*|ipv6_addrconf|kaluad|kmpath_rdacd"
    r"|blkcg_punt_bio|ata_sff|ttm_swap|tpm_dev_wq|inet_frag_wq|kcryptd[-_a-z]*|kverityd|khubd|ksgxd)$"
)

SPARED = frozenset(
    {
        # shells
        "sh",
        "bash",
        "dash",
        "zsh",
        "ksh",
        "mksh",
        "ash",
        "csh",
        "tcsh",
        "fish",
        "busybox",
        "toybox",
        # init systems, supervisors, runtimes, node agents
        "init",
        "systemd",
        "tini",
        "dumb-init",
        "catatonit",
        "s6-svscan",
        "s6-supervise",
        "supervisord",
        "runit",
        "runc",
        "crun",
        "containerd",
        "containerd-shim",
        "containerd-shim-runc-v2",
        "conmon",
        "pause",
        "kubelet",
        "dockerd",
        "docker-init",
        "cilium-agent",
        "tetragon",
        "kube-proxy",
        "coredns",
        # everyday utilities
        "env",
        "cat",
        "ls",
        "cp",
        "mv",
        "rm",
        "ln",
        "mkdir",
        "chmod",
        "chown",
        "tar",
        "gzip",
        "gunzip",
        "ps",
        "kill",
        "sleep",
        "timeout",
        "sed",
        "awk",
        "gawk",
        "grep",
        "find",
        "xargs",
        "head",
        "tail",
        "tee",
        "date",
        "curl",
        "wget",
        "sudo",
        "su",
        "su-exec",
        "gosu",
        "setpriv",
        "nice",
        "ionice",
        "true",
        "false",
        "test",
        "echo",
        "printf",
        "sort",
        "uniq",
        "wc",
        "cut",
        "tr",
        "stat",
        "touch",
        "basename",
        "dirname",
    }
)

COMMON_PROGRAMS = frozenset(
    {
        # web servers, application servers, reverse proxies, ingress controllers
        "nginx",
        "openresty",
        "nginx-ingress-controller",
        "httpd",
        "httpd-foreground",
        "apache2",
        "lighttpd",
        "caddy",
        "traefik",
        "haproxy",
        "envoy",
        "squid",
        "varnishd",
        "h2o",
        "kong",
        "unitd",
        "php-fpm",
        "php-cgi",
        "uwsgi",
        "gunicorn",
        "uvicorn",
        "hypercorn",
        "daphne",
        "puma",
        "unicorn",
        "passenger",
        "catalina.sh",
        "contour",
        "oauth2-proxy",
        "kube-rbac-proxy",
        "cloudflared",
        # service meshes
        "pilot-agent",
        "pilot-discovery",
        "linkerd2-proxy",
        "linkerd-proxy",
        "cilium-envoy",
        # databases, caches, queues, storage
        "postgres",
        "postmaster",
        "pgbouncer",
        "pgpool",
        "mysqld",
        "mysqld_safe",
        "mariadbd",
        "mariadbd-safe",
        "mongod",
        "mongos",
        "redis-server",
        "redis-sentinel",
        "valkey-server",
        "keydb-server",
        "memcached",
        "cassandra",
        "elasticsearch",
        "opensearch",
        "clickhouse",
        "clickhouse-server",
        "influxd",
        "etcd",
        "consul",
        "vault",
        "nats-server",
        "rabbitmq-server",
        "beam.smp",
        "epmd",
        "kafka-server-start.sh",
        "zkserver.sh",
        "minio",
        "cockroach",
        "tidb-server",
        "tikv-server",
        "couchdb",
        "arangod",
        "rethinkdb",
        "sqlservr",
        "tnslsnr",
        "ceph-osd",
        "ceph-mon",
        "rook",
        "longhorn-manager",
        # Kubernetes components, CNI and CSI plugins
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "cloud-controller-manager",
        "cluster-autoscaler",
        "karpenter",
        "metrics-server",
        "kube-state-metrics",
        "aws-k8s-agent",
        "aws-node",
        "calico-node",
        "calico-kube-controllers",
        "bird",
        "bird6",
        "felix",
        "flanneld",
        "cilium-operator",
        "cilium-operator-generic",
        "cilium-operator-aws",
        "hubble-relay",
        "crio",
        "csi-node-driver-registrar",
        "csi-provisioner",
        "csi-attacher",
        "livenessprobe",
        "aws-ebs-csi-driver",
        "snapshot-controller",
        "argocd-server",
        "argocd-repo-server",
        "argocd-application-controller",
        "source-controller",
        "kustomize-controller",
        "helm-controller",
        "cainjector",
        "gke-metadata-server",
        # node, logging and observability agents
        "prometheus",
        "alertmanager",
        "grafana",
        "grafana-server",
        "loki",
        "promtail",
        "tempo",
        "thanos",
        "node_exporter",
        "node-exporter",
        "fluentd",
        "fluent-bit",
        "vector",
        "filebeat",
        "metricbeat",
        "logstash",
        "otelcol",
        "otelcol-contrib",
        "datadog-agent",
        "process-agent",
        "trace-agent",
        "system-probe",
        "newrelic-infra",
        "oneagentwatchdog",
        "falco",
        "amazon-ssm-agent",
        "ssm-agent-worker",
        "amazon-cloudwatch-agent",
        "aws-otel-collector",
        "telegraf",
        # system daemons
        "sshd",
        "sshd-session",
        "dropbear",
        "cron",
        "crond",
        "atd",
        "rsyslogd",
        "syslog-ng",
        "systemd-journald",
        "systemd-udevd",
        "dbus-daemon",
        "chronyd",
        "ntpd",
        "nscd",
        "sssd",
        "polkitd",
        "named",
        "unbound",
        "dnsmasq",
        "pdns_server",
        "master",
        "smtpd",
        "dovecot",
        "exim4",
        "sendmail",
        # the usual entrypoint names (operators built with kubebuilder run /manager, for instance)
        "manager",
        "controller",
        "operator",
        "webhook",
        "server",
        "agent",
        "proxy",
        "app",
        "main",
        "service",
        "worker",
        "entrypoint",
        "entrypoint.sh",
        "docker-entrypoint.sh",
        "docker-entrypoint",
        "run.sh",
        "start.sh",
        "startup.sh",
        "init.sh",
        "bootstrap.sh",
        "launch.sh",
    }
)

NOT_A_NAME = "not a bare executable name"
NEVER_ON_EVIDENCE = "shell, interpreter, runtime or everyday utility: never blocked on evidence"
COMMON_PROGRAM = (
    "the name of a common server, proxy, database, agent or entrypoint (miners masquerade as these): "
    "never killed cluster-wide on evidence"
)
KERNEL_THREAD_NAME = (
    "a kernel-thread name (a process with it in a container is a masquerade): never killed cluster-wide"
)


def bare_name(name: str) -> str:
    """``/usr/sbin/nginx`` and the ``Postfix`` value ``/nginx`` as ``nginx``; anything else as given."""
    return name.rsplit("/", 1)[-1] if name.startswith("/") else name


def is_executable_name(name: str) -> bool:
    """A bare executable name: what a ``Postfix /<name>`` match can carry and a report can show."""
    return _SAFE_NAME.match(name) is not None


def _forms(name: str) -> tuple[str, str]:
    lowered = name.lower()
    return lowered, _VERSION_SUFFIX.sub("", lowered)


def refuse_on_evidence(name: str) -> str | None:
    """Why ``name`` (a process name, path or ``Postfix`` value) may never be enforced on evidence
    anywhere, or None: not a bare executable name, or a shell, interpreter, runtime or utility."""
    bare = bare_name(name)
    if not is_executable_name(bare):
        return NOT_A_NAME
    if any(form in SPARED or INTERPRETER.match(form) for form in _forms(bare)):
        return NEVER_ON_EVIDENCE
    return None


def refuse_cluster_wide(name: str) -> str | None:
    """The reason ``name`` (a process name, path or ``Postfix`` value) may never be killed
    cluster-wide, or None. Everything :func:`refuse_on_evidence` refuses, the common programs and
    the kernel threads."""
    reason = refuse_on_evidence(name)
    if reason is not None:
        return reason
    forms = _forms(bare_name(name))
    if any(form in COMMON_PROGRAMS for form in forms):
        return COMMON_PROGRAM
    if any(KERNEL_THREAD.match(form) for form in forms):
        return KERNEL_THREAD_NAME
    return None
