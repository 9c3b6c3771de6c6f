"""Loopback stand-ins for everything outside the product (Qualys, the feeds, AbuseIPDB, the Kubernetes
API server, AWS through a moto server, the Lambda runtime), used by the tests and by `make demo`."""
