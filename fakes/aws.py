"""The AWS side of a local run: moto servers on loopback.

- ``moto_endpoint()``: an in-process moto server (plain HTTP, no IAM checks) for tests of one component
  that make their own buckets or queues;
- ``moto_server()``: fakes/moto_server.py (moto with what it lacks filled in) over HTTPS, in a
  process of its own that checks every request against IAM (that switch is global to a moto process),
  or in this process without the checks (``make costs`` counts its requests). template.yaml is
  deployed on it (fakes/stack.py) and the functions run there under their own roles.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx

from fakes.tls import LoopbackTls

ACCOUNT = "123456789012"
REGION = "us-east-1"
REPO = Path(__file__).resolve().parents[1]


@contextmanager
def moto_endpoint(endpoint_url: str | None) -> Iterator[str]:
    """Yield ``endpoint_url``, or start an in-process moto server on loopback and yield its URL."""
    if endpoint_url:
        yield endpoint_url
        return
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log lines in the demo output
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        # moto's backends are global to the process: start from an empty account every time.
        httpx.post(f"{url}/moto-api/reset", timeout=10).raise_for_status()
        yield url
    finally:
        server.stop()


class MotoServerError(RuntimeError):
    """The moto server did not start."""


@dataclass(frozen=True)
class MotoServer:
    """A running fakes/moto_server.py: its URL, the certificate its clients trust, and the keys of
    an administrator (the only credentials that work until others are made, while IAM is enforced)."""

    url: str
    tls: LoopbackTls
    admin: dict[str, str]
    enforcing: bool

    def client(self, service: str, **credentials: str) -> Any:
        # any service by name: boto3's typed overloads each need a literal service name
        make: Callable[..., Any] = boto3.client
        return make(
            service,
            endpoint_url=self.url,
            region_name=REGION,
            verify=str(self.tls.certificate),
            **(credentials or self.admin),
        )

    @property
    def env(self) -> dict[str, str]:
        """Where a process finds this server (the endpoint, the certificate, the region); no credentials."""
        return {"AWS_ENDPOINT_URL": self.url, "AWS_DEFAULT_REGION": REGION, **self.tls.client_env}

    @property
    def admin_env(self) -> dict[str, str]:
        """``env`` with the administrator's keys: what an operator's shell has (the CLI reads it)."""
        return {
            **self.env,
            "AWS_ACCESS_KEY_ID": self.admin["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": self.admin["aws_secret_access_key"],
        }

    def enforce_iam(self, on: bool) -> None:
        """Switch the IAM checks on or off (off: to act as an AWS service would, e.g. Lambda assuming a
        function's role). Only a server that enforces IAM can switch."""
        assert self.enforcing, "this moto server runs in-process without IAM checks"
        response = httpx.post(
            f"{self.url}/moto-api/reset-auth", content=b"0" if on else b"inf", timeout=10, verify=self.tls.ssl_context
        )
        response.raise_for_status()


def _administrator(url: str, tls: LoopbackTls) -> dict[str, str]:
    iam = boto3.client(
        "iam", endpoint_url=url, region_name=REGION, verify=str(tls.certificate), aws_access_key_id="x",
        aws_secret_access_key="x",
    )  # fmt: skip
    iam.create_user(UserName="admin")
    everything = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    iam.put_user_policy(UserName="admin", PolicyName="everything", PolicyDocument=json.dumps(everything))
    key = iam.create_access_key(UserName="admin")["AccessKey"]
    return {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def moto_server(
    *,
    enforce_iam: bool = True,
    wrap: Callable[[Any], Any] | None = None,
    tls: LoopbackTls | None = None,
    tls_terminated: bool = False,
) -> Iterator[MotoServer]:
    """fakes/moto_server.py on 127.0.0.1 over HTTPS (``tls``, or a certificate made for it), with an
    administrator. ``enforce_iam``: in a process of its own, every request checked against IAM; else in
    this process without checks, its WSGI application wrapped in ``wrap`` (a request counter).
    ``tls_terminated``: the server process over HTTP, every request taken as having come over TLS (a
    fleet of agents; ``fakes.moto_server.make_server``); ``tls`` is still made for the fakes beside it."""
    with tempfile.TemporaryDirectory(prefix="cdr-policy-moto-") as tmp:
        tls = tls or LoopbackTls.create(Path(tmp))
        if enforce_iam:
            assert wrap is None, "a middleware runs only in this process"
            with _server_process(tls, tls_terminated) as url:
                admin = _administrator(url, tls)
                server = MotoServer(url, tls, admin, enforcing=True)
                server.enforce_iam(True)
                yield server
        else:
            import logging

            from fakes import moto_server as filled

            logging.getLogger("werkzeug").setLevel(logging.ERROR)
            httpd = filled.make_server("127.0.0.1", 0, certificate=str(tls.certificate), key=str(tls.key), wrap=wrap)
            with filled.running(httpd) as url:
                # moto's backends are global to this process: start from an empty account.
                httpx.post(f"{url}/moto-api/reset", timeout=10, verify=tls.ssl_context).raise_for_status()
                yield MotoServer(url, tls, _administrator(url, tls), enforcing=False)


@contextmanager
def _server_process(tls: LoopbackTls, tls_terminated: bool) -> Iterator[str]:
    port = _free_port()
    command = [sys.executable, "-m", "fakes.moto_server", "--port", str(port)]
    if not tls_terminated:
        command += ["--certificate", str(tls.certificate), "--key", str(tls.key)]
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=log)
        url = f"{'http' if tls_terminated else 'https'}://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(f"{url}/moto-api/data.json", timeout=2, verify=tls.ssl_context)
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        log.seek(0)
                        tail = log.read().decode(errors="replace").strip().splitlines()[-1:]
                        raise MotoServerError(f"the moto server did not start ({' '.join(tail)})") from None
                    time.sleep(0.1)
            yield url
        finally:
            server.terminate()
            server.wait(timeout=10)
