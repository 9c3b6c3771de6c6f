"""Threat-intel feeds and reputation: configuration, download, parsing, plausibility, aggregation."""
