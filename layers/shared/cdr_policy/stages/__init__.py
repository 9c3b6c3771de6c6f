"""The four pipeline stages, one module each, in the order data flows: ``cdr_fetch`` (Qualys findings
→ raw pages, the CDR indicator set, the checkpoint), ``feed_sync`` (feeds → indicator sets),
``render`` (indicator sets → one bundle per channel) and ``publish`` (bundle → signed channel
manifest). Each takes its ports (stores, a client, a queue, a signer) as arguments and returns a
typed result; ``cdr_policy.wiring`` builds the ports for Lambda and for the CLI."""
