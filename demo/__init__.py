"""Local demo and test fixtures: fake services on loopback and the local runner."""
