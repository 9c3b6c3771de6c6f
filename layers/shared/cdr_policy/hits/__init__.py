"""What each indicator actually blocked: Tetragon and Hubble export events attributed back to the
bundle's objects and, through its provenance index (``bundle.provenance``), to the feeds and CDR
findings that put them there.

- ``events``: one export line -> the few fields attribution needs (bounded, never echoed);
- ``attribute``: an event -> the indicator of ours it hit (``Hit``), or none;
- ``tally``: counting lines (ours, unattributed, malformed), for the command and the reader;
- ``files``: reading an export file whole (plain or gzip), for ``cdr-policy hits``.
"""
