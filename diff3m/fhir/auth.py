"""FHIR authentication: none, a static bearer token, or SMART Backend Services (JWT client credentials)."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Protocol

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from diff3m.config import FhirSettings
from diff3m.fhir.errors import FhirAuthError, FhirRetryableError

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
EXPIRY_MARGIN_SECONDS = 30.0  # renew a cached token this long before it expires


class Auth(Protocol):
    """Supplies the Authorization header for FHIR requests."""

    def headers(self) -> dict[str, str]:
        """Headers to add to a request (may fetch a token)."""
        ...

    def invalidate(self) -> None:
        """Forget any cached credential (after the server answered 401)."""
        ...


class NoAuth:
    """No authentication."""

    def headers(self) -> dict[str, str]:
        """No headers."""
        return {}

    def invalidate(self) -> None:
        """Nothing cached."""


class BearerAuth:
    """A static bearer token from the configuration."""

    def __init__(self, token: str) -> None:
        self._token = token

    def headers(self) -> dict[str, str]:
        """The configured token."""
        return {"Authorization": f"Bearer {self._token}"}

    def invalidate(self) -> None:
        """A static token cannot be renewed."""


def signing_algorithm(key: object) -> str:
    """RS384 for an RSA key, ES384 for an EC key (SMART Backend Services algorithms)."""
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS384"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "ES384"
    raise FhirAuthError("private key must be RSA (RS384) or EC (ES384)")


class SmartBackendAuth:
    """SMART Backend Services: a client_credentials grant with a signed JWT assertion; token cached."""

    def __init__(self, client_id: str, private_key_pem: bytes, token_url: str, scope: str = "",
                 key_id: str = "", timeout: float = 10.0) -> None:
        try:
            self._key = load_pem_private_key(private_key_pem, password=None)
        except (ValueError, TypeError) as err:
            raise FhirAuthError(f"cannot load private key: {err}") from None
        self.algorithm = signing_algorithm(self._key)
        self.client_id, self.token_url, self.scope, self.key_id = client_id, token_url, scope, key_id
        self.timeout = timeout
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()
        self.tokens_fetched = 0

    def assertion(self) -> str:
        """A fresh signed client assertion JWT (5 minutes validity, unique jti)."""
        now = int(time.time())
        claims = {"iss": self.client_id, "sub": self.client_id, "aud": self.token_url,
                  "iat": now, "exp": now + 300, "jti": uuid.uuid4().hex}
        headers = {"kid": self.key_id} if self.key_id else None
        return jwt.encode(claims, self._key, algorithm=self.algorithm, headers=headers)  # type: ignore[arg-type]

    def _fetch(self) -> None:
        data = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": self.assertion()}
        if self.scope:
            data["scope"] = self.scope
        try:
            resp = httpx.post(self.token_url, data=data, timeout=self.timeout,
                              headers={"Accept": "application/json"})
        except httpx.HTTPError as err:
            raise FhirRetryableError(f"token endpoint unreachable: {type(err).__name__}") from None
        if resp.status_code >= 500 or resp.status_code == 429:
            raise FhirRetryableError(f"token endpoint answered {resp.status_code}", resp.status_code)
        try:
            body = resp.json()
        except ValueError:
            raise FhirAuthError(f"token endpoint answered {resp.status_code} without JSON") from None
        if resp.status_code != 200 or not isinstance(body, dict) or not body.get("access_token"):
            detail = body.get("error_description") or body.get("error") if isinstance(body, dict) else ""
            raise FhirAuthError(f"token endpoint refused ({resp.status_code}): {detail}", resp.status_code)
        self._token = str(body["access_token"])
        try:
            lifetime = float(body.get("expires_in", 300))
        except (TypeError, ValueError):
            lifetime = 300.0
        self._expires_at = time.monotonic() + max(0.0, lifetime - EXPIRY_MARGIN_SECONDS)
        self.tokens_fetched += 1

    def headers(self) -> dict[str, str]:
        """The cached access token, fetched again when it is (nearly) expired."""
        with self._lock:
            if self._token is None or time.monotonic() >= self._expires_at:
                self._fetch()
            return {"Authorization": f"Bearer {self._token}"}

    def invalidate(self) -> None:
        """Drop the cached token."""
        with self._lock:
            self._token = None


_SMART: dict[tuple[str, ...], SmartBackendAuth] = {}
_SMART_LOCK = threading.Lock()


def auth_for(settings: FhirSettings) -> Auth:
    """The Auth that ``settings.auth`` asks for; SMART instances (and their tokens) are shared per process."""
    if settings.auth == "bearer":
        return BearerAuth(settings.token)
    if settings.auth == "smart":
        path = Path(settings.private_key)
        try:
            pem = path.read_bytes()
        except OSError as err:
            raise FhirAuthError(f"cannot read fhir.private_key: {err.strerror}") from None
        key = (settings.client_id, settings.token_url, settings.scope, settings.key_id, pem.decode("latin-1"))
        with _SMART_LOCK:
            if key not in _SMART:
                _SMART[key] = SmartBackendAuth(settings.client_id, pem, settings.token_url, settings.scope,
                                               settings.key_id, settings.timeout_seconds)
            return _SMART[key]
    return NoAuth()
