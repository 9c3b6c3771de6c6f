"""The stage tests run each stage's whole protocol over the fixtures of the packages it drives: the
Qualys gateway and clients (CdrFetch), the feed server (FeedSync), signing keys and stores (Publish)."""

from tests.unit.bundle.conftest import approver, approver_pair, approvers, dist, key_pair, signer, state, verifier
from tests.unit.feeds.conftest import http, now, server, store, www
from tests.unit.qualys.conftest import clock, creds, make_client, mapping, samples_gateway

__all__ = [
    "approver",
    "approver_pair",
    "approvers",
    "clock",
    "creds",
    "dist",
    "http",
    "key_pair",
    "make_client",
    "mapping",
    "now",
    "samples_gateway",
    "server",
    "signer",
    "state",
    "store",
    "verifier",
    "www",
]
