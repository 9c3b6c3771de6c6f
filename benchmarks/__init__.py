"""Reproducible performance comparisons (``python -m benchmarks``; ``make bench``).

The feed-ingest benchmark generates a million-line file in the feeds' real formats and times,
each in its own process: our ingest (parse, never-block filter, aggregate), FireHOL ``iprange``
and ``ipaddress.collapse_addresses``. See ``benchmarks/__main__.py``.
"""
