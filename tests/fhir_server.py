"""The dev FHIR server (deploy/fhir-dev-server, a real FHIR R4 engine) for tests, on a free port, seeded."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.services import free_port, require_tool, stop, wait_port

SERVER_DIR = Path(__file__).resolve().parent.parent / "deploy" / "fhir-dev-server"
SEED_BUNDLE = SERVER_DIR / "seed-bundle.json"
MRN_SYSTEM = "http://hospital.example.org/mrn"  # the seed bundle's patient identifier system
OTHER_MRN_SYSTEM = "http://clinic-b.example.org/mrn"


@dataclass
class FhirDevServer:
    """A running dev FHIR server."""

    port: int
    proc: subprocess.Popen

    @property
    def base_url(self) -> str:
        """The FHIR base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_url(self) -> str:
        """The test SMART token endpoint."""
        return f"{self.base_url}/auth/token"

    def get(self, path: str, token: str = "") -> Any:
        """GET a path (relative to the base) as JSON."""
        req = urllib.request.Request(f"{self.base_url}/{path.lstrip('/')}")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def search(self, query: str, token: str = "") -> list[dict[str, Any]]:
        """Every resource a search matches (all pages)."""
        out: list[dict[str, Any]] = []
        bundle = self.get(query, token)
        while True:
            out += [e["resource"] for e in bundle.get("entry", [])]
            nxt = [lk["url"] for lk in bundle.get("link", []) if lk["relation"] == "next"]
            if not nxt:
                return out
            bundle = self.get(nxt[0][len(self.base_url):], token)

    def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
        """POST a JSON body."""
        req = urllib.request.Request(f"{self.base_url}/{path.lstrip('/')}", data=json.dumps(body).encode(),
                                     method="POST", headers={"Content-Type": "application/fhir+json",
                                                             **(headers or {})})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())


@contextmanager
def fhir_dev_server(seed: bool = True, require_auth: bool = False, static_tokens: Sequence[str] = (),
                    jwks: Path | None = None, token_ttl: int = 300,
                    page_size: int = 20) -> Iterator[FhirDevServer]:
    """Start the dev FHIR server on a free port (seeded with the demo Bundle unless ``seed`` is False)."""
    node = require_tool("node")
    if not (SERVER_DIR / "node_modules" / "@medplum" / "fhir-router").is_dir():
        pytest.fail("dev FHIR server packages missing: run deploy/scripts/ensure-test-tools.sh (npm ci)")
    port = free_port()
    args = [node, str(SERVER_DIR / "server.js"), "--port", str(port), "--token-ttl", str(token_ttl),
            "--page-size", str(page_size)]
    if seed:
        args += ["--seed", str(SEED_BUNDLE)]
    if require_auth:
        args.append("--require-auth")
    for t in static_tokens:
        args += ["--static-token", t]
    if jwks is not None:
        args += ["--jwks", str(jwks)]
    proc = subprocess.Popen(args, cwd=SERVER_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_port("127.0.0.1", port, 60, proc)
        yield FhirDevServer(port, proc)
    finally:
        stop(proc)
