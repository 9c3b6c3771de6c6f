"""Manifest signatures: ECDSA P-256 with SHA-256, by an AWS KMS asymmetric key in the cloud or a
local PEM key file in local mode; verified with ``cryptography`` against one or more public keys.

What is signed is a short statement, ``cdr-policy-manifest-v1\\n<sha256 hex of the canonical JSON of
the manifest without its signature fields>``. Signing this fixed-size statement rather than the
manifest itself keeps every KMS request under its 4096-byte ``MessageType=RAW`` limit however many
files a bundle has, and the domain prefix keeps the signature from being valid for anything else.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cdr_policy import jsonio
from cdr_policy.bundle.manifest import Manifest, Signature, VerificationError
from cdr_policy.errors import BundleError, ConfigError, StorageError, aws_cause
from cdr_policy.timeutil import utcnow

ALGORITHM: Final = "ECDSA_SHA_256"  # as KMS names it (Final: its literal type)
_STATEMENT_PREFIX = b"cdr-policy-manifest-v1\n"
_ECDSA = ec.ECDSA(hashes.SHA256())


def statement(unsigned_document: Mapping[str, Any], domain: bytes = _STATEMENT_PREFIX) -> bytes:
    """The statement a signature of a document (without its signature fields) covers: ``domain``
    (which kind of document: a signature is never valid for another kind) and the sha256 of its
    canonical JSON."""
    return domain + hashlib.sha256(jsonio.dumps(unsigned_document)).hexdigest().encode()


def signing_message(manifest: Manifest) -> bytes:
    """The statement a signature of ``manifest`` covers (see the module docstring)."""
    return statement(manifest.unsigned().to_json())


class Signer(Protocol):
    def sign(self, message: bytes) -> tuple[bytes, str]:
        """``(DER ECDSA signature, key id)`` over ``message`` with ``ALGORITHM``."""
        ...

    def public_key_pem(self) -> str:
        """The public half (PEM): Publish verifies the channel's current manifest with it."""
        ...


def sign_manifest(manifest: Manifest, signer: Signer) -> Manifest:
    """``manifest`` with its ``signature`` (base64 DER), ``key_id`` and ``signature_algorithm``."""
    body = manifest.unsigned()
    signature, key_id = signer.sign(signing_message(body))
    return body.replace(signature=Signature(base64.b64encode(signature).decode(), key_id, ALGORITHM))


def _fingerprint(public_key: ec.EllipticCurvePublicKey) -> str:
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "local:" + hashlib.sha256(der).hexdigest()[:16]


def _public_pem(public_key: ec.EllipticCurvePublicKey) -> str:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


class KmsSigner:
    """Signs with an AWS KMS asymmetric key (KeySpec ``ECC_NIST_P256``, KeyUsage ``SIGN_VERIFY``)."""

    def __init__(self, kms_client: Any, key_id: str) -> None:
        if not key_id:
            raise ConfigError("KMS signing key id is empty: set SIGNING_KEY_ID")
        self.kms = kms_client
        self.key_id = key_id

    def sign(self, message: bytes) -> tuple[bytes, str]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            resp = self.kms.sign(KeyId=self.key_id, Message=message, MessageType="RAW", SigningAlgorithm=ALGORITHM)
        except (ClientError, BotoCoreError) as exc:
            raise BundleError(f"KMS could not sign with key {self.key_id} ({aws_cause(exc)})") from exc
        return resp["Signature"], resp["KeyId"]

    def public_key_pem(self) -> str:
        """The key's public half as PEM, for the agents' ``--public-key``."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            der = self.kms.get_public_key(KeyId=self.key_id)["PublicKey"]
        except (ClientError, BotoCoreError) as exc:
            raise BundleError(f"KMS could not return the public key of {self.key_id} ({aws_cause(exc)})") from exc
        return _public_pem(serialization.load_der_public_key(der))  # type: ignore[arg-type]


class LocalSigner:
    """Signs with a P-256 private key held in a PEM file (local mode, the demo, tests)."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(private_key, ec.EllipticCurvePrivateKey) or private_key.curve.name != "secp256r1":
            raise ConfigError("the local signing key must be an ECDSA P-256 (secp256r1) private key")
        self._key = private_key
        self.key_id = _fingerprint(private_key.public_key())

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> LocalSigner:
        path = Path(path)
        try:
            mode = path.stat().st_mode
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read signing key {path}: {exc.strerror}") from exc
        if os.name == "posix" and mode & 0o077:
            raise ConfigError(f"signing key {path} is readable by other users: chmod 600 {path}")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"signing key {path} is not an unencrypted PEM private key: {exc}") from exc
        return cls(key)  # type: ignore[arg-type]

    def sign(self, message: bytes) -> tuple[bytes, str]:
        return self._key.sign(message, _ECDSA), self.key_id

    def public_key_pem(self) -> str:
        return _public_pem(self._key.public_key())


def generate_local_key(path: str | os.PathLike[str]) -> str:
    """Create a new P-256 private key at ``path`` (PKCS#8 PEM, mode 0600; never overwrites).
    Returns the public key as PEM."""
    path = Path(path)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise ConfigError(f"signing key {path} already exists: refusing to overwrite it") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
    except OSError as exc:  # a full disk: no half-written key is left behind
        path.unlink(missing_ok=True)
        raise StorageError(f"cannot write signing key {path} ({exc.strerror or exc})") from exc
    return _public_pem(key.public_key())


class Verifier:
    """Checks signatures against one or more trusted public keys (several during a key rotation)."""

    def __init__(self, public_keys: list[ec.EllipticCurvePublicKey]) -> None:
        if not public_keys:
            raise ConfigError("no public key to verify bundles with")
        for key in public_keys:
            if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
                raise ConfigError("bundle verification keys must be ECDSA P-256 (secp256r1) public keys")
        self._keys = list(public_keys)
        self.key_ids = [_fingerprint(k) for k in self._keys]

    @classmethod
    def from_public_pem(cls, pem: str | bytes) -> Verifier:
        """Every ``PUBLIC KEY`` block in ``pem``."""
        text = pem.decode() if isinstance(pem, bytes) else pem
        marker = "-----BEGIN PUBLIC KEY-----"
        blocks = [marker + part for part in text.split(marker)[1:]]
        if not blocks:
            raise ConfigError("no '-----BEGIN PUBLIC KEY-----' block in the bundle verification key")
        keys = []
        for block in blocks:
            try:
                keys.append(serialization.load_pem_public_key(block.encode()))
            except ValueError as exc:
                raise ConfigError(f"unreadable public key in the bundle verification key: {exc}") from exc
        return cls(keys)  # type: ignore[arg-type]

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Verifier:
        try:
            return cls.from_public_pem(Path(path).read_bytes())
        except OSError as exc:
            raise ConfigError(f"cannot read public key {path}: {exc.strerror}") from exc

    def verify(self, message: bytes, signature: bytes) -> bool:
        for key in self._keys:
            try:
                key.verify(signature, message, _ECDSA)
            except InvalidSignature:
                continue
            return True
        return False


def verify_signature(manifest: Manifest, verifier: Verifier) -> None:
    """Refuse (VerificationError, a BundleError with a ``code``) a manifest that is unsigned, signed with an
    unknown algorithm or by another key. Expiry is not checked."""
    signed = manifest.signature
    if signed is None:
        raise VerificationError("missing_signature", "missing signature: the manifest is not signed")
    if signed.algorithm != ALGORITHM:
        raise VerificationError("unknown_algorithm", f"unknown signature algorithm (expected {ALGORITHM})")
    try:
        signature = base64.b64decode(signed.value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise VerificationError("bad_signature", "bad signature: not valid base64") from exc
    if not verifier.verify(signing_message(manifest), signature):
        raise VerificationError(
            "bad_signature",
            f"bad signature: does not verify with the trusted key(s) {', '.join(verifier.key_ids)}",
        )


def verify_manifest(manifest: Manifest, verifier: Verifier, *, now: datetime | None = None) -> None:
    """``verify_signature``, and refuse a bundle that has expired at ``now`` (default: the current time)."""
    verify_signature(manifest, verifier)
    now = now or utcnow()
    if manifest.expires <= now:
        raise VerificationError("expired", f"bundle {manifest.digest[:12]} expired at {manifest.expires_at}")
