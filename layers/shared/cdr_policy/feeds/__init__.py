"""Threat-intel feeds and reputation, in the order FeedSync uses them.

- ``config``: the built-in feeds and the ``feeds:`` YAML that replaces or extends them.
- ``download``: bounded, conditional, concurrent downloads (httpx; ``file://`` too).
- ``parse``: strict parsers for the real formats; ambiguous entries are refused with a reason.
- ``gate``: is a download plausible enough to replace the last good copy?
- ``aggregate``: the never-block filter, aggregation into the minimal prefix set, and the merge
  of indicator sets across sources (with ``lanes`` and ``prefix`` for the integer fast path).
- ``persist``: where FeedSync keeps sets, state and raw copies, and when it rewrites them.
- ``sync``: the FeedSync stage (``run_feed_sync``).
- ``abuseipdb``: reputation scores for CDR-extracted IPs, with cache and quota handling.
- ``ranking``: the evidence order used when a channel's capacity budget is exceeded.
"""
