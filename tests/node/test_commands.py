"""The node's CLI: ``diff3m scp`` as a process, ``diff3m send`` to it, ``diff3m deliveries list|retry``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from sqlalchemy import func, select
from typer.testing import CliRunner

from diff3m.cli import app
from diff3m.db.models import DeliveryKind, DeliveryStatus, Instance
from diff3m.db.session import session_scope
from diff3m.node import outbox
from tests.dicom_factory import write_file
from tests.services import free_port, stop, wait_port


def _config(tmp_path: Path, sqlite_url: str, port: int) -> Path:
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'''
[node]
ae_title = "NODE1"
host = "127.0.0.1"
port = {port}
storage_dir = "{tmp_path / 'storage'}"
study_quiet_seconds = 0.5
min_free_disk_mb = 1

[database]
url = "{sqlite_url}"
''')
    return cfg


def test_scp_process_and_send(tmp_path: Path, sqlite_url: str) -> None:
    port = free_port()
    cfg = _config(tmp_path, sqlite_url, port)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "diff3m", "scp", "--config", str(cfg), "--no-assembly"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        wait_port("127.0.0.1", port, 60, proc)
        folder = tmp_path / "in"
        for i in range(3):
            write_file(folder / f"{i}.dcm", rows=8, cols=8, study_uid="1.3.3", sop_uid=f"1.3.3.{i}")
        result = CliRunner().invoke(app, ["send", str(folder), "--port", str(port), "--aet", "NODE1"])
        assert result.exit_code == 0, result.output
        assert "sent 3 instance(s)" in result.output
        wrong = CliRunner().invoke(app, ["send", str(folder), "--port", str(port), "--aet", "OTHER"])
        assert wrong.exit_code == 1 and "send failed" in wrong.output
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        finally:
            stop(proc)
    assert proc.returncode == 0
    with session_scope(sqlite_url) as s:
        assert s.scalar(select(func.count(Instance.id))) == 3


def test_deliveries_list_and_retry(tmp_path: Path, sqlite_url: str) -> None:
    from diff3m.config import DeliverySettings

    cfg = _config(tmp_path, sqlite_url, free_port())
    with session_scope(sqlite_url) as s:
        d = outbox.enqueue(s, DeliveryKind.DICOM, "pacs", {"files": []}, dedup_key="cli", max_attempts=1)
        outbox.claim_due(s)
        outbox.mark_failed(s, d.id, "AssociationFailed: refused", DeliverySettings())
    runner = CliRunner()
    listed = runner.invoke(app, ["deliveries", "list", "--config", str(cfg), "--status", "dead"])
    assert listed.exit_code == 0, listed.output
    assert "pacs" in listed.output and "dead" in listed.output and "refused" in listed.output
    retried = runner.invoke(app, ["deliveries", "retry", str(d.id), "--config", str(cfg)])
    assert retried.exit_code == 0, retried.output
    with session_scope(sqlite_url) as s:
        assert outbox.list_deliveries(s)[0].status == DeliveryStatus.PENDING
    assert runner.invoke(app, ["deliveries", "retry", "999", "--config", str(cfg)]).exit_code == 1
