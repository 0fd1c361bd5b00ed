"""Real peers for the tests: PostgreSQL, Redis, Orthanc, storescp, dciodvfy.

Each uses the running service when one answers on its standard port, otherwise starts a
throwaway process on a free port. A peer that cannot be had fails the test loudly.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(host: str, port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    """Wait until host:port accepts connections, or fail naming the port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else "(see its log)"
            pytest.fail(f"process exited ({proc.returncode}) before listening on {port}: {out[-2000:]}")
        time.sleep(0.1)
    pytest.fail(f"nothing listening on {host}:{port} after {timeout}s")


def require_tool(name: str) -> str:
    """The path of a peer program; fails loudly (no skip) when it is missing."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if not path:
        pytest.fail(f"required peer '{name}' is not installed (run `make test-tools`)")
    return path


def stop(proc: subprocess.Popen) -> None:
    """Terminate a child process, killing it if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# --- PostgreSQL -------------------------------------------------------------------------


@contextmanager
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server URL (no database): the local one at :5432, else a throwaway cluster."""
    if port_open("127.0.0.1", 5432):
        yield "postgresql://postgres@127.0.0.1:5432"
        return
    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdb:
        pytest.fail("PostgreSQL is neither running on 127.0.0.1:5432 nor installed (initdb)")
    bindir = Path(initdb[-1]).parent
    tmp = Path(tempfile.mkdtemp(prefix="diff3m-pg-"))
    port = free_port()
    user_args: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run it as nobody-owned dir via 'postgres' user
        shutil.chown(tmp, "postgres")
        user_args = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*user_args, str(bindir / "initdb"), "-D", str(tmp / "data"), "-U", "postgres",
                    "-A", "trust"], check=True, capture_output=True)
    proc = subprocess.Popen(
        [*user_args, str(bindir / "postgres"), "-D", str(tmp / "data"), "-p", str(port),
         "-k", str(tmp), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        wait_port("127.0.0.1", port, 60, proc)
        time.sleep(0.5)
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def create_database(server_url: str) -> str:
    """Create a fresh, uniquely named database on ``server_url`` and return its URL."""
    import psycopg

    name = f"diff3m_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url.replace("postgresql://", "postgresql://", 1) + "/postgres",
                         autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{server_url}/{name}"


def drop_database(url: str) -> None:
    """Drop a database made by create_database."""
    import psycopg

    server, name = url.rsplit("/", 1)
    with psycopg.connect(server + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- Redis ------------------------------------------------------------------------------


@contextmanager
def redis_server() -> Iterator[str]:
    """A Redis URL: the local one at :6379, else a throwaway redis-server."""
    if port_open("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379"
        return
    exe = require_tool("redis-server")
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="diff3m-redis-")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", tmp],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_port("127.0.0.1", port, 20, proc)
        yield f"redis://127.0.0.1:{port}"
    finally:
        stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


# --- Orthanc (the PACS) -----------------------------------------------------------------


@dataclass
class Orthanc:
    """A running Orthanc: its DICOM AE and its REST API."""

    aet: str
    dicom_port: int
    http_port: int
    storage: Path
    proc: subprocess.Popen

    @property
    def url(self) -> str:
        """Base URL of the REST API."""
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str) -> object:
        """GET a REST resource as JSON."""
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, body: object) -> object:
        """POST JSON to a REST resource."""
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            data = r.read()
            return json.loads(data) if data else None

    def instances(self) -> list[str]:
        """Orthanc ids of every stored instance."""
        return list(self.get("/instances"))  # type: ignore[arg-type]

    def sop_instance_uids(self) -> set[str]:
        """SOP Instance UIDs of every stored instance."""
        out = set()
        for oid in self.instances():
            tags = self.get(f"/instances/{oid}/simplified-tags")
            out.add(tags["SOPInstanceUID"])  # type: ignore[index]
        return out


@contextmanager
def orthanc_server(modalities: dict[str, tuple[str, str, int]] | None = None,
                   aet: str = "ORTHANC") -> Iterator[Orthanc]:
    """Start a throwaway Orthanc with the given known modalities {name: (aet, host, port)}."""
    exe = require_tool("Orthanc")
    tmp = Path(tempfile.mkdtemp(prefix="diff3m-orthanc-"))
    dicom_port, http_port = free_port(), free_port()
    plugins = [p for p in ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so",) if os.path.exists(p)]
    cfg = {
        "Name": "diff3m-test-pacs",
        "StorageDirectory": str(tmp / "db"),
        "IndexDirectory": str(tmp / "db"),
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "UnknownSopClassAccepted": True,
        "DicomModalities": {k: list(v) for k, v in (modalities or {}).items()},
        "Plugins": plugins,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "StableAge": 1,
    }
    (tmp / "orthanc.json").write_text(json.dumps(cfg))
    proc = subprocess.Popen([exe, str(tmp / "orthanc.json")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        wait_port("127.0.0.1", http_port, 60, proc)
        wait_port("127.0.0.1", dicom_port, 30, proc)
        yield Orthanc(aet, dicom_port, http_port, tmp / "db", proc)
    finally:
        stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


# --- storescp (a plain DICOM receiver) --------------------------------------------------


@dataclass
class StoreScp:
    """dcmtk's storescp writing what it receives into ``folder``."""

    aet: str
    port: int
    folder: Path
    proc: subprocess.Popen

    def files(self) -> list[Path]:
        """Every file received so far."""
        return sorted(p for p in self.folder.rglob("*") if p.is_file())


@contextmanager
def storescp_server(aet: str = "STORESCP") -> Iterator[StoreScp]:
    """Start dcmtk storescp on a free port, accepting every storage SOP class."""
    exe = require_tool("storescp")
    folder = Path(tempfile.mkdtemp(prefix="diff3m-storescp-"))
    port = free_port()
    proc = subprocess.Popen([exe, "-aet", aet, "-od", str(folder), "-uf", "+xa", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_port("127.0.0.1", port, 20, proc)
        yield StoreScp(aet, port, folder, proc)
    finally:
        stop(proc)
        shutil.rmtree(folder, ignore_errors=True)


# --- dciodvfy ----------------------------------------------------------------------------


def dciodvfy_errors(path: str | Path) -> list[str]:
    """The 'Error' lines dciodvfy reports for a DICOM file (an empty list means valid)."""
    exe = require_tool("dciodvfy")
    proc = subprocess.run([exe, "-new", str(path)], capture_output=True, text=True, timeout=120)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def assert_dciodvfy_clean(path: str | Path) -> None:
    """Fail with dciodvfy's own words when the object has any error."""
    errors = dciodvfy_errors(path)
    assert not errors, f"dciodvfy found errors in {path}:\n" + "\n".join(errors)
