"""Signatures: local key and AWS KMS (moto) round trips, and every way a manifest is refused."""

from __future__ import annotations

import base64
import copy
import json
import os
import stat
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from moto import mock_aws
from mypy_boto3_kms import KMSClient

from cdr_policy.bundle.manifest import SCHEMA, Manifest, VerificationError, build_manifest
from cdr_policy.bundle.signing import (
    ALGORITHM,
    KmsSigner,
    LocalSigner,
    Verifier,
    generate_local_key,
    sign_manifest,
    signing_message,
    verify_manifest,
    verify_signature,
)
from cdr_policy.errors import BundleError, ConfigError
from cdr_policy.schemas import schema_errors

from .factory import SETTINGS, SOURCE, T0, files_of, sign_document, tracing_policy


def unsigned_manifest(n_files: int = 2) -> Manifest:
    """A manifest as Publish signs it (with its generation)."""
    files = files_of({f"tp-{i:04d}.yaml": tracing_policy(f"tp-{i:04d}") for i in range(n_files)})
    return build_manifest(
        files,
        channel="prod",
        settings=SETTINGS,
        counts={"TracingPolicy": n_files},
        created_at="2026-01-10T16:00:00Z",
        expires_at="2026-01-13T16:00:00Z",
        source_digest=SOURCE,
    ).replace(generation=1)


def code_of(manifest: Manifest | dict[str, Any], verifier: Verifier, **kwargs: Any) -> str:
    """How a reader refuses ``manifest`` (a document is parsed first, as every reader does)."""
    with pytest.raises(VerificationError) as exc:
        verify_manifest(
            manifest if isinstance(manifest, Manifest) else Manifest.from_json(manifest), verifier, **kwargs
        )
    return exc.value.code


def test_generated_key_is_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "signing.pem"
    public = generate_local_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert public.startswith("-----BEGIN PUBLIC KEY-----")
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        generate_local_key(path)
    assert path.read_bytes() == before


def test_local_round_trip(signer: LocalSigner, verifier: Verifier) -> None:
    signed = sign_manifest(unsigned_manifest(), signer).to_json()
    assert signed["signature_algorithm"] == ALGORITHM
    assert signed["key_id"] == signer.key_id and signed["key_id"].startswith("local:")
    assert schema_errors(signed, SCHEMA) == []
    verify_manifest(Manifest.from_json(signed), verifier, now=T0)


def test_signature_survives_reformatting_of_the_json(signer: LocalSigner, verifier: Verifier) -> None:
    signed = sign_manifest(unsigned_manifest(), signer)
    reparsed = json.loads(json.dumps(signed.to_json(), indent=4, sort_keys=False))
    verify_manifest(Manifest.from_json(reparsed), verifier, now=T0)


def test_group_readable_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    generate_local_key(path)
    os.chmod(path, 0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        LocalSigner.from_file(path)


def test_non_p256_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "rsa.pem"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match="P-256"):
        LocalSigner.from_file(path)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(ConfigError, match="P-256"):
        Verifier.from_public_pem(pem)
    with pytest.raises(ConfigError, match="BEGIN PUBLIC KEY"):
        Verifier.from_public_pem("not a key")


def test_missing_signature_is_refused(verifier: Verifier) -> None:
    assert code_of(unsigned_manifest(), verifier, now=T0) == "missing_signature"


def test_unknown_algorithm_is_refused(signer: LocalSigner, verifier: Verifier) -> None:
    signed = {**sign_manifest(unsigned_manifest(), signer).to_json(), "signature_algorithm": "RSASSA_PSS_SHA_256"}
    assert code_of(signed, verifier, now=T0) == "unknown_algorithm"


def test_signature_from_another_key_is_refused(tmp_path: Path, verifier: Verifier) -> None:
    other = tmp_path / "other.pem"
    generate_local_key(other)
    signed = sign_manifest(unsigned_manifest(), LocalSigner.from_file(other))
    with pytest.raises(VerificationError, match="does not verify with the trusted key") as exc:
        verify_manifest(signed, verifier, now=T0)
    assert exc.value.code == "bad_signature"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda m: m["settings"].update(action="Sigkill"),
        lambda m: m.update(expires_at="2027-01-13T16:00:00Z"),
        lambda m: m.update(channel="staging"),
        lambda m: m["counts"].update(TracingPolicy=99),
        lambda m: m.update(signature="!!not base64!!"),
    ],
)
def test_any_change_to_a_signed_manifest_is_refused(
    signer: LocalSigner, verifier: Verifier, tamper: Callable[[dict[str, Any]], object]
) -> None:
    tampered = copy.deepcopy(sign_manifest(unsigned_manifest(), signer).to_json())
    tamper(tampered)
    assert code_of(tampered, verifier, now=T0) == "bad_signature"


def test_signed_digest_that_does_not_match_the_file_list_is_refused(signer: LocalSigner, verifier: Verifier) -> None:
    m = unsigned_manifest().to_json()
    m["digest"] = "f" * 64  # signed as it is: the signature is valid, the digest is not
    assert code_of(sign_document(m, signer), verifier, now=T0) == "digest_mismatch"


def test_expired_bundle_is_refused_but_its_signature_still_checks(signer: LocalSigner, verifier: Verifier) -> None:
    signed = sign_manifest(unsigned_manifest(), signer)
    expiry = signed.expires
    verify_manifest(signed, verifier, now=expiry - timedelta(seconds=1))
    with pytest.raises(VerificationError, match="expired at 2026-01-13T16:00:00Z") as exc:
        verify_manifest(signed, verifier, now=expiry)
    assert exc.value.code == "expired"
    verify_signature(signed, verifier)


def test_a_key_rotation_pem_trusts_both_keys(tmp_path: Path, signer: LocalSigner, verifier: Verifier) -> None:
    new_path = tmp_path / "new.pem"
    new_public = generate_local_key(new_path)
    old_public = signer.public_key_pem()
    both = Verifier.from_public_pem(old_public + new_public)
    verify_manifest(sign_manifest(unsigned_manifest(), signer), both, now=T0)
    verify_manifest(sign_manifest(unsigned_manifest(), LocalSigner.from_file(new_path)), both, now=T0)
    assert len(both.key_ids) == 2


def test_signed_statement_stays_small_for_large_bundles() -> None:
    # KMS signs at most 4096 bytes with MessageType=RAW.
    assert len(signing_message(unsigned_manifest(300))) < 100


@pytest.fixture
def kms() -> Iterator[KMSClient]:
    with mock_aws():
        yield boto3.client("kms", region_name="us-east-1")


def test_kms_round_trip(kms: KMSClient) -> None:
    key_id = kms.create_key(KeyUsage="SIGN_VERIFY", KeySpec="ECC_NIST_P256")["KeyMetadata"]["KeyId"]
    kms_signer = KmsSigner(kms, key_id)
    signed = sign_manifest(unsigned_manifest(300), kms_signer)
    assert signed.signature is not None
    assert signed.signature.key_id.startswith("arn:aws:kms:") and signed.signature.key_id.endswith(key_id)
    verifier = Verifier.from_public_pem(kms_signer.public_key_pem())
    verify_manifest(signed, verifier, now=T0)
    # The signature is a plain DER ECDSA-SHA256 signature over the statement: KMS itself agrees.
    assert kms.verify(
        KeyId=key_id,
        Message=signing_message(signed),
        MessageType="RAW",
        Signature=base64.b64decode(signed.signature.value),
        SigningAlgorithm=ALGORITHM,
    )["SignatureValid"]


def test_kms_signature_does_not_verify_with_a_local_key(kms: KMSClient, verifier: Verifier) -> None:
    key_id = kms.create_key(KeyUsage="SIGN_VERIFY", KeySpec="ECC_NIST_P256")["KeyMetadata"]["KeyId"]
    signed = sign_manifest(unsigned_manifest(), KmsSigner(kms, key_id))
    assert code_of(signed, verifier, now=T0) == "bad_signature"


def test_kms_failure_is_a_bundle_error(kms: KMSClient) -> None:
    with pytest.raises(BundleError, match="KMS could not sign"):
        sign_manifest(unsigned_manifest(), KmsSigner(kms, "alias/does-not-exist"))
    with pytest.raises(ConfigError):
        KmsSigner(kms, "")


def test_verifier_public_key_matches_signer(signer: LocalSigner) -> None:
    key = serialization.load_pem_public_key(signer.public_key_pem().encode())
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
