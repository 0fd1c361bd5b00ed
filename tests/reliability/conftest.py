"""Fault-injection helpers: restartable node processes, a TCP proxy that can drop a peer, a
misbehaving FHIR server, a pynetdicom sender that records every C-STORE status, log scanning."""

from __future__ import annotations

import http.server
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from tests import services
from tests.e2e.conftest import NodeConfig

ROUNDS = int(os.environ.get("DIFF3M_RELIABILITY_ROUNDS", "0"))  # 0: each test's CI default


def rounds(default: int) -> int:
    """How many times a fault is repeated: ``DIFF3M_RELIABILITY_ROUNDS`` when set, else ``default``."""
    return ROUNDS or default


def rng() -> random.Random:
    """A random source whose seed is printed, so a failing sequence of moments can be replayed."""
    seed = int(os.environ.get("DIFF3M_RELIABILITY_SEED", str(random.randrange(1 << 30))))
    print(f"reliability seed {seed}")
    return random.Random(seed)


# --- node processes that can be killed and restarted ----------------------------------------


@dataclass
class NodeProcs:
    """``diff3m <part>`` processes of one node config; each can be SIGKILLed and started again."""

    cfg: NodeConfig
    env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def log(self, part: str) -> Path:
        """The log file of ``part`` (appended across restarts)."""
        return self.cfg.root / f"{part}.log"

    def start(self, part: str, *args: str, wait_port: int | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start ``diff3m PART --config CFG ARGS``; wait for ``wait_port`` to accept connections."""
        with open(self.log(part), "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "diff3m", part, "--config", str(self.cfg.path), *args],
                stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env, **(env or {})},
            )
        self.procs[part] = proc
        if wait_port is not None:
            services.wait_port("127.0.0.1", wait_port, 120, proc)
        return proc

    def kill9(self, part: str) -> None:
        """SIGKILL ``part`` (no cleanup of any kind) and reap it."""
        proc = self.procs.pop(part)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)

    def stop_all(self) -> None:
        """SIGTERM every part still running (SIGKILL if it lingers)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.procs.clear()

    def logs(self) -> list[Path]:
        """Every log file this node wrote."""
        return sorted(self.cfg.root.glob("*.log"))


# --- a TCP proxy: the way to make a peer unreachable without touching shared services --------


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target``; ``down()`` drops every connection and refuses new
    ones (the peer looks dead), ``up()`` listens again on the same port."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = services.free_port()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._server: socket.socket | None = None
        self.up()

    def up(self) -> None:
        """Accept and forward connections."""
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(64)
        self._server = srv
        threading.Thread(target=self._accept, args=(srv,), daemon=True).start()

    def down(self) -> None:
        """Stop listening and cut every open connection."""
        with self._lock:
            srv, self._server = self._server, None
            conns, self._conns = self._conns, []
        if srv is not None:
            srv.close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _accept(self, srv: socket.socket) -> None:
        while True:
            try:
                client, _ = srv.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._server is not srv:
                    client.close()
                    upstream.close()
                    return
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        """Stop for good."""
        self.down()


# --- a Redis of our own (never restart the shared one) -------------------------------------


class RedisProc:
    """A throwaway redis-server without persistence, restartable on the same port."""

    def __init__(self) -> None:
        self.exe = services.require_tool("redis-server")
        self.port = services.free_port()
        self.dir = tempfile.mkdtemp(prefix="diff3m-rel-redis-")
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        """redis:// URL."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (again) on our port."""
        self.proc = subprocess.Popen([self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", self.dir],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        services.wait_port("127.0.0.1", self.port, 20, self.proc)

    def kill9(self) -> None:
        """SIGKILL it: every queued and unacknowledged message is gone."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        """Stop and remove its folder."""
        if self.proc is not None:
            services.stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


# --- a FHIR server that misbehaves on demand ------------------------------------------------


class BadFhir:
    """An HTTP server standing in for a broken FHIR server: ``mode`` is "error" (HTTP 503),
    "stall" (answers after ``stall`` seconds) or "garbage" (200 with a body that is not FHIR)."""

    def __init__(self, stall: float = 5.0) -> None:
        self.mode = "error"
        self.stall = stall
        self.hits = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.hits += 1
                mode = outer.mode
                if mode == "stall":
                    time.sleep(outer.stall)
                status, body = (503, b'{"resourceType": "OperationOutcome"}') if mode == "error" else \
                    (200, b"<html>\x00\xff not json {{{")
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/fhir+json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass

            do_POST = do_PUT = do_GET  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/fhir"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Shut the server down."""
        self.server.shutdown()
        self.server.server_close()


# --- a C-STORE sender that knows which instance got Success ---------------------------------


@dataclass
class SendReport:
    """Per SOP Instance UID, the status the node answered (missing: no answer, e.g. connection lost)."""

    statuses: dict[str, int] = field(default_factory=dict)
    aborted: bool = False

    @property
    def succeeded(self) -> set[str]:
        """UIDs answered with 0x0000."""
        return {uid for uid, st in self.statuses.items() if st == 0x0000}


def send_datasets(port: int, datasets: list[Dataset], aet: str = "MODALITY", called: str = "DIFF3M",
                  on_sent: Callable[[int], None] | None = None) -> SendReport:
    """C-STORE ``datasets`` over one association with pynetdicom, recording each status.

    A lost connection ends the send (``aborted``); instances not answered are left out of ``statuses``.
    """
    from pynetdicom import AE

    from diff3m.node.scu import keep_responses_for_sender

    ae = AE(ae_title=aet)
    # a modality-like patience: the check is "no failed C-STORE", not a latency bound (a busy CI box
    # can take longer than 30 s to answer one store while 8 associations share its 2 cores)
    ae.acse_timeout = 30
    ae.dimse_timeout = ae.network_timeout = 120
    for uid in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(uid, [str(datasets[0].file_meta.TransferSyntaxUID)])
    report = SendReport()
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        report.aborted = True
        return report
    keep_responses_for_sender(assoc)
    try:
        for i, ds in enumerate(datasets):
            if not assoc.is_established:
                report.aborted = True
                break
            status = assoc.send_c_store(ds)
            if "Status" not in status:  # no response: the peer went away
                report.aborted = True
                break
            report.statuses[str(ds.SOPInstanceUID)] = int(status.Status)
            if on_sent is not None:
                on_sent(i)
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()
    return report


# --- PHI in logs --------------------------------------------------------------------------

PHI_NAME = "QUIXOTEZZ^DULCINEAXX"
PHI_BIRTH = "19370415"


def phi_patient():  # noqa: ANN201 - tests.dicom_factory.Patient
    """A patient whose name and birth date are distinctive enough to grep for in every log."""
    from tests.dicom_factory import Patient

    return Patient(patient_id="REL-PHI-1", name=PHI_NAME, birth_date=PHI_BIRTH)


def phi_hits(paths: list[Path]) -> list[str]:
    """Log lines that carry any part of the distinctive name or birth date (any common spelling)."""
    needles = ["QUIXOTEZZ", "DULCINEAXX", PHI_BIRTH, "1937-04-15", "15.04.1937", "04/15/1937"]
    hits = []
    for p in paths:
        for line in p.read_text(errors="replace").splitlines():
            if any(n.lower() in line.lower() for n in needles):
                hits.append(f"{p.name}: {line[:300]}")
    return hits


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path | None]:
    """A 16 MiB tmpfs (root only); None where mounting is not possible."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        yield None
        return
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        yield None
        return
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
