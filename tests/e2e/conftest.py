"""End-to-end helpers: write a node config, run `diff3m` processes, push studies with storescu."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests import services


@dataclass
class NodeConfig:
    """Ports and paths of one node under test, and its TOML file."""

    root: Path
    dicom_port: int
    web_port: int
    path: Path

    @property
    def web(self) -> str:
        """Base URL of the node's web app."""
        return f"http://127.0.0.1:{self.web_port}"


def toml_value(v: object) -> str:
    """A Python value as a TOML value (strings, numbers, booleans, lists, inline tables)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(v)


def write_config(root: Path, *, checkpoint: str, destinations: list[dict[str, object]],
                 routing: list[dict[str, object]], fhir_url: str = "", database_url: str = "",
                 broker_url: str = "", storage: str = "storage", extra: str = "") -> NodeConfig:
    """A TOML config for a node on free ports under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    dicom_port, web_port = services.free_port(), services.free_port()
    lines = [
        "[node]", 'ae_title = "DIFF3M"', 'host = "127.0.0.1"', f"port = {dicom_port}",
        f'storage_dir = "{root / storage}"', "study_quiet_seconds = 1", "min_free_disk_mb = 1",
        "[database]", f'url = "{database_url or "sqlite:///" + str(root / "node.sqlite")}"',
        "[queue]", f'broker_url = "{broker_url or "sqla+sqlite:///" + str(root / "queue.sqlite")}"',
        "[model]", f'checkpoint = "{checkpoint}"', 'device = "cpu"', "batch_size = 4",
        "[web]", 'host = "127.0.0.1"', f"port = {web_port}",
        "[fhir]", f'base_url = "{fhir_url}"',
    ]
    for d in destinations:
        lines += ["[[destinations]]"] + [f"{k} = {toml_value(v)}" for k, v in d.items()]
    for r in routing:
        lines += ["[[routing]]"] + [f"{k} = {toml_value(v)}" for k, v in r.items()]
    path = root / "node.toml"
    path.write_text("\n".join(lines) + "\n" + extra)
    return NodeConfig(root, dicom_port, web_port, path)


@contextmanager
def diff3m_process(*args: str, log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """Run ``diff3m ARGS`` in the background; SIGTERM it afterwards (kill if it lingers)."""
    with open(log, "ab") as out:  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "diff3m", *args], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def get_json(url: str) -> dict | None:
    """GET a JSON document; None on 404 or connection errors."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def wait_study(cfg: NodeConfig, study_uid: str, statuses: tuple[str, ...] = ("done",), timeout: float = 180,
               log: Path | None = None) -> dict:
    """Poll the API until the study reaches one of ``statuses``; fail with the log tail otherwise."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = get_json(f"{cfg.web}/api/studies/{study_uid}")
        if last and last.get("status") in statuses:
            return last
        if last and last.get("status") == "failed" and "failed" not in statuses:
            break
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
    raise AssertionError(f"study {study_uid} did not reach {statuses}: last={last}\n--- log tail ---\n{tail}")


def storescu(port: int, *files: Path, aet: str = "MODALITY", called: str = "DIFF3M") -> None:
    """Push files with dcmtk's storescu; fails the test on a non-zero exit."""
    exe = services.require_tool("storescu")
    proc = subprocess.run([exe, "-aet", aet, "-aec", called, "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
