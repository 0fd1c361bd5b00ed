"""Auth against the dev server enforcing bearer tokens: static token, SMART Backend Services (RS384/ES384)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from diff3m.config import Settings, load_settings
from diff3m.fhir.auth import SmartBackendAuth, auth_for
from diff3m.fhir.client import FhirClient
from diff3m.fhir.ehr import StudyContext, fetch_ehr
from diff3m.fhir.errors import FhirAuthError
from tests.fhir_server import MRN_SYSTEM, FhirDevServer, fhir_dev_server

STATIC = "static-test-token-123"
CTX = StudyContext("DIFF3M-0001", study_date=date(2024, 3, 15))


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An RSA and an EC P-384 key (PEM files) registered in a JWKS, plus an unregistered RSA key."""
    d = tmp_path_factory.mktemp("keys")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP384R1())
    rogue = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks = {"keys": [
        {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key())), "kid": "rsa-1"},
        {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key())), "kid": "ec-1"},
    ]}
    out = {"jwks": d / "jwks.json", "rsa": d / "rsa.pem", "ec": d / "ec.pem", "rogue": d / "rogue.pem"}
    out["jwks"].write_text(json.dumps(jwks))
    out["rsa"].write_bytes(pem(rsa_key))
    out["ec"].write_bytes(pem(ec_key))
    out["rogue"].write_bytes(pem(rogue))
    return out


@pytest.fixture(scope="module")
def server(keys: dict[str, Path]) -> Iterator[FhirDevServer]:
    with fhir_dev_server(require_auth=True, static_tokens=[STATIC], jwks=keys["jwks"]) as s:
        yield s


def smart(server: FhirDevServer, key: Path, kid: str, client_id: str = "diff3m-node") -> Settings:
    return load_settings(fhir={"base_url": server.base_url, "patient_identifier_system": MRN_SYSTEM,
                               "auth": "smart", "client_id": client_id, "private_key": str(key),
                               "key_id": kid, "token_url": server.token_url})


def test_without_credentials_the_server_refuses(server: FhirDevServer) -> None:
    s = load_settings(fhir={"base_url": server.base_url, "patient_identifier_system": MRN_SYSTEM})
    rec = fetch_ehr(s, CTX)
    assert not rec.available and "401" in (rec.reason or "")
    with FhirClient.from_settings(s.fhir) as client, pytest.raises(FhirAuthError):
        client.read("Patient", "x")


def test_static_bearer_token(server: FhirDevServer) -> None:
    s = load_settings(fhir={"base_url": server.base_url, "patient_identifier_system": MRN_SYSTEM,
                            "auth": "bearer", "token": STATIC})
    rec = fetch_ehr(s, CTX)
    assert rec.available and rec.values["weight"] == 74.6
    wrong = load_settings(fhir={"base_url": server.base_url, "auth": "bearer", "token": "nope"})
    assert not fetch_ehr(wrong, CTX).available


@pytest.mark.parametrize(("key", "kid", "alg"), [("rsa", "rsa-1", "RS384"), ("ec", "ec-1", "ES384")])
def test_smart_backend_services_token_is_fetched_once_and_cached(
        server: FhirDevServer, keys: dict[str, Path], key: str, kid: str, alg: str) -> None:
    s = smart(server, keys[key], kid, client_id=f"client-{alg}")
    auth = auth_for(s.fhir)
    assert isinstance(auth, SmartBackendAuth) and auth.algorithm == alg
    header = jwt.get_unverified_header(auth.assertion())
    assert header["alg"] == alg and header["kid"] == kid
    issued_before = server.get("healthz")["tokenRequests"]
    first = fetch_ehr(s, CTX)
    second = fetch_ehr(s, CTX)
    assert first.available and second.available and first.values == second.values
    assert first.values["systolic"] == 132.0
    assert server.get("healthz")["tokenRequests"] == issued_before + 1  # cached until expiry
    assert auth_for(s.fhir) is auth and auth.tokens_fetched == 1


def test_smart_with_an_unregistered_key_is_refused(server: FhirDevServer, keys: dict[str, Path]) -> None:
    s = smart(server, keys["rogue"], "rsa-1", client_id="rogue-client")
    rec = fetch_ehr(s, CTX)
    assert not rec.available and "signature does not verify" in (rec.reason or "")


def test_smart_with_an_unreadable_key_is_a_clear_error(server: FhirDevServer, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    rec = fetch_ehr(smart(server, bad, "x"), CTX)
    assert not rec.available and "cannot load private key" in (rec.reason or "")
    missing = fetch_ehr(smart(server, tmp_path / "missing.pem", "x"), CTX)
    assert not missing.available and "cannot read fhir.private_key" in (missing.reason or "")


def test_smart_token_renewed_when_expired_or_rejected(server: FhirDevServer, keys: dict[str, Path]) -> None:
    s = smart(server, keys["ec"], "ec-1", client_id="renewing-client")
    auth = auth_for(s.fhir)
    assert isinstance(auth, SmartBackendAuth)
    assert fetch_ehr(s, CTX).available and auth.tokens_fetched == 1
    auth._expires_at = 0.0  # the cached token reached its expiry
    assert fetch_ehr(s, CTX).available and auth.tokens_fetched == 2
    auth._token = "revoked-by-the-server"  # still "valid" locally, refused with 401 by the server
    assert fetch_ehr(s, CTX).available and auth.tokens_fetched == 3
