"""Throwaway peers for benchmarks: free ports, waiting for a listener, an Orthanc PACS on free ports."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 60, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until 127.0.0.1:port accepts connections; RuntimeError if it does not (or ``proc`` exits)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}) before listening on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout:.0f} s")


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM a child process; kill it if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@dataclass(frozen=True)
class Orthanc:
    """A running Orthanc: its AE title, DICOM port and REST base URL."""

    aet: str
    dicom_port: int
    http: str

    def get(self, path: str) -> Any:
        """GET a REST resource as JSON."""
        with urllib.request.urlopen(self.http + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, body: Any) -> Any:
        """POST JSON to a REST resource; the JSON answer."""
        req = urllib.request.Request(self.http + path, data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def studies_with_sr(self) -> set[str]:
        """StudyInstanceUIDs that have at least one SR series stored."""
        series = self.post("/tools/find", {"Level": "Series", "Query": {"Modality": "SR"}, "Expand": True})
        uids = set()
        for s in series:
            study = self.get(f"/studies/{s['ParentStudy']}")
            uids.add(str(study["MainDicomTags"]["StudyInstanceUID"]))
        return uids


@contextmanager
def orthanc(workdir: Path, aet: str = "PACS") -> Iterator[Orthanc]:
    """Orthanc (no plugins) storing under ``workdir``, accepting C-STORE from any AE."""
    exe = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    port, http = free_port(), free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = {
        "Name": "bench-pacs", "StorageDirectory": str(workdir / "db"), "IndexDirectory": str(workdir / "db"),
        "DicomAet": aet, "DicomPort": port, "HttpPort": http, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True,
        "Plugins": [],
    }  # fmt: skip
    (workdir / "orthanc.json").write_text(json.dumps(cfg))
    with open(workdir / "orthanc.log", "ab") as log:
        proc = subprocess.Popen([exe, str(workdir / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(http, 60, proc)
        wait_port(port, 30, proc)
        yield Orthanc(aet, port, f"http://127.0.0.1:{http}")
    finally:
        stop(proc)
