"""Failure modes against a misbehaving peer (errors, stalls, garbage): typed errors, retries, no crash."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from diff3m.config import load_settings
from diff3m.fhir.client import FhirClient, retry_after_seconds
from diff3m.fhir.ehr import StudyContext, fetch_ehr
from diff3m.fhir.errors import FhirHttpError, FhirInvalidResponse, FhirRetryableError
from tests.services import free_port

PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1960-05-20"}


@dataclass
class Reply:
    """One scripted answer: status, JSON-able or raw body, headers, seconds to stall first."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    stall: float = 0.0


class Peer:
    """A tiny HTTP server answering from a script (the last reply repeats); records request paths."""

    def __init__(self, replies: list[Reply]) -> None:
        self.replies, self.paths = list(replies), []  # type: list[Reply], list[str]
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                peer.paths.append(self.path)
                reply = peer.replies.pop(0) if len(peer.replies) > 1 else peer.replies[0]
                if reply.stall:
                    time.sleep(reply.stall)
                body = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    for k, v in {"Content-Type": "application/fhir+json", **reply.headers}.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up (timeout)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def peer() -> Iterator[Any]:
    made: list[Peer] = []

    def start(*replies: Reply) -> Peer:
        made.append(Peer(list(replies)))
        return made[-1]

    yield start
    for p in made:
        p.close()


def client_for(url: str, sleeps: list[float], retries: int = 2, timeout: float = 0.5) -> FhirClient:
    return FhirClient(url, timeout=timeout, max_retries=retries, backoff=0.01, sleep=sleeps.append)


def bundle(*resources: dict[str, Any], next_url: str | None = None) -> dict[str, Any]:
    b: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset",
                         "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources]}
    if next_url:
        b["link"] = [{"relation": "next", "url": next_url}]
    return b


def test_retry_after_is_honoured_then_success(peer: Any) -> None:
    p = peer(Reply(503, {"resourceType": "OperationOutcome"}, {"Retry-After": "2"}),
             Reply(429, {}, {"Retry-After": "1"}), Reply(200, PATIENT))
    sleeps: list[float] = []
    with client_for(p.url, sleeps) as c:
        patient = c.read("Patient", "p1")
    assert patient.id == "p1" and str(patient.gender) == "female"  # type: ignore[attr-defined]
    assert sleeps == [2.0, 1.0] and len(p.paths) == 3


def test_retry_after_http_date() -> None:
    later = format_datetime(datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=30), usegmt=True)
    assert 25 <= (retry_after_seconds(later) or 0) <= 30
    assert retry_after_seconds("garbage") is None and retry_after_seconds(None) is None


def test_persistent_5xx_is_retryable_after_max_retries(peer: Any) -> None:
    p = peer(Reply(500, {"resourceType": "OperationOutcome"}))
    sleeps: list[float] = []
    with client_for(p.url, sleeps, retries=2) as c, pytest.raises(FhirRetryableError) as err:
        c.read("Patient", "p1")
    assert err.value.status == 500 and "after 3 attempts" in err.value.reason
    assert len(p.paths) == 3 and len(sleeps) == 2


def test_stall_times_out_as_retryable(peer: Any) -> None:
    p = peer(Reply(200, PATIENT, stall=1.0))
    with client_for(p.url, [], retries=0, timeout=0.3) as c:
        with pytest.raises(FhirRetryableError, match="timed out"):
            c.read("Patient", "p1")


def test_4xx_is_not_retried(peer: Any) -> None:
    p = peer(Reply(404, {"resourceType": "OperationOutcome",
                         "issue": [{"severity": "error", "code": "not-found", "diagnostics": "Not found"}]}))
    with client_for(p.url, []) as c, pytest.raises(FhirHttpError) as err:
        c.read("Patient", "p1")
    assert err.value.status == 404 and "Not found" in err.value.reason and not err.value.retryable
    assert len(p.paths) == 1
    assert FhirHttpError("conflict", 412).retryable and not FhirHttpError("bad", 400).retryable


@pytest.mark.parametrize(("reply", "reason"), [
    (Reply(200, b"<html>oops</html>", {"Content-Type": "text/html"}), "not JSON"),
    (Reply(200, b'{"resourceType": "Bundle", "entry": ['), "not JSON"),
    (Reply(200, {"hello": "world"}), "not a Bundle"),
    (Reply(200, bundle({**PATIENT, "birthDate": "20th of May"})), "invalid Patient"),
])
def test_garbage_is_a_typed_error(peer: Any, reply: Reply, reason: str) -> None:
    p = peer(reply)
    with client_for(p.url, []) as c, pytest.raises(FhirInvalidResponse, match=reason) as err:
        c.search("Patient", {"identifier": "X"})
    assert err.value.retryable


def test_paging_follows_next_on_the_same_host_only(peer: Any) -> None:
    p = peer(Reply(200, {}))
    p.replies = [Reply(200, bundle(PATIENT, next_url=f"{p.url}/Patient?page=2")),
                 Reply(200, bundle({**PATIENT, "id": "p2"}, next_url=f"{p.url}/Patient?page=3")),
                 Reply(200, bundle({**PATIENT, "id": "p3"}))]
    with client_for(p.url, []) as c:
        assert [r.id for r in c.search("Patient")] == ["p1", "p2", "p3"]  # type: ignore[attr-defined]
    assert p.paths[1:] == ["/Patient?page=2", "/Patient?page=3"]
    q = peer(Reply(200, bundle(PATIENT, next_url="http://elsewhere.example:1/Patient?page=2")))
    with client_for(q.url, []) as c, pytest.raises(FhirInvalidResponse, match="another host"):
        c.search("Patient")


@pytest.mark.parametrize(("reply", "reason"), [
    (Reply(503, {}), "503"),
    (Reply(200, bundle(PATIENT), stall=1.0), "timed out"),
    (Reply(200, b"garbage"), "not JSON"),
    (Reply(401, {}), "401"),
])
def test_fetch_ehr_never_raises(peer: Any, reply: Reply, reason: str) -> None:
    p = peer(reply)
    s = load_settings(fhir={"base_url": p.url})
    ctx = StudyContext("DIFF3M-0001", study_date=date(2024, 3, 15), sex="M", age="070Y", view="AP")
    rec = fetch_ehr(s, ctx, client=client_for(p.url, [], retries=1, timeout=0.3))
    assert not rec.available and reason in (rec.reason or "")
    assert rec.values["sex"] == "M" and rec.values["age"] == 70.0 and rec.values["view"] == "AP"


def test_fetch_ehr_with_the_server_down() -> None:
    s = load_settings(fhir={"base_url": f"http://127.0.0.1:{free_port()}", "max_retries": 0})
    rec = fetch_ehr(s, StudyContext("DIFF3M-0001", study_date=date(2024, 3, 15)))
    assert not rec.available and "ConnectError" in (rec.reason or "")
