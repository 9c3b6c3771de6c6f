"""The in-cluster sync agent: poll a channel, verify, apply, prune, report."""
