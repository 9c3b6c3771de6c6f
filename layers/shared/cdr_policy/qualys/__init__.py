"""Qualys CDR: platforms, authentication, the findings client, category mapping and IOC extraction."""
