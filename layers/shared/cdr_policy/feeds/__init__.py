"""Threat-intel feeds and reputation, in the order FeedSync uses them.

- ``config``: the built-in feeds and the ``feeds:`` YAML that replaces or extends them.
- ``download``: bounded, conditional, concurrent downloads (httpx; ``file://`` too).
- ``parse``: strict parsers for the real formats; ambiguous entries are refused with a reason
  (``scan``: its vectorised path for the lines that are one IPv4 address or CIDR).
- ``gate``: is a download plausible enough to replace the last good copy?
- ``aggregate``: the never-block filter and the aggregation into the minimal prefix set
  (``cdr_policy.netprefix`` holds the prefix primitives).
- ``persist``: where FeedSync keeps sets, state and raw copies, and when it rewrites them.
- ``abuseipdb``: reputation scores for CDR-extracted IPs, with cache and quota handling.

The FeedSync stage that runs them is ``cdr_policy.stages.feed_sync``.
"""
