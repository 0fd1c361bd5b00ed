"""Disk below the watermark on a real (tiny tmpfs) file system: associations refused cleanly, resumed
when space returns, a full disk never leaves partial files; secrets masked in `config show`; the
dependency-audit policy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from diff3m.config import load_settings
from diff3m.node import ingest
from diff3m.node.scp import start_listener
from tests.dicom_factory import make_dataset, to_bytes, write_file
from tests.node.conftest import storescu
from tests.reliability.audit_policy import failing_findings
from tests.services import free_port


def test_disk_watermark_refuses_then_resumes(tmp_path: Path, sqlite_url: str, tmpfs: Path | None) -> None:
    if tmpfs is None:
        pytest.skip("needs root to mount a tmpfs; tests/node/test_scp_policy.py covers the refusal")
    settings = load_settings(None, node={"storage_dir": str(tmpfs / "storage"), "host": "127.0.0.1",
                                         "port": free_port(), "min_free_disk_mb": 8},
                             database={"url": sqlite_url})
    listener = start_listener(settings)
    ballast = tmpfs / "ballast"
    f1 = write_file(tmp_path / "a.dcm", rows=16, cols=16)
    f2 = write_file(tmp_path / "b.dcm", rows=16, cols=16)
    try:
        assert storescu(listener.port, f1).returncode == 0  # 16 MiB free: accepted
        ballast.write_bytes(b"\0" * (10 * 1024 * 1024))  # now about 6 MiB free, below the 8 MiB mark
        proc = storescu(listener.port, f2)
        assert proc.returncode != 0
        assert "Rejected Transient" in proc.stderr and "Local Limit Exceeded" in proc.stderr, proc.stderr
        ballast.unlink()  # space returns: the same listener accepts again, no restart
        assert storescu(listener.port, f2).returncode == 0
    finally:
        listener.stop()
    stored = sorted(p.name for p in (tmpfs / "storage" / "studies").rglob("*.dcm"))
    assert len(stored) == 2


def test_full_disk_answers_out_of_resources_without_partial_file(sqlite_url: str, tmpfs: Path | None) -> None:
    if tmpfs is None:
        pytest.skip("needs root to mount a tmpfs")
    settings = load_settings(None, node={"storage_dir": str(tmpfs / "storage"), "min_free_disk_mb": 0},
                             database={"url": sqlite_url})
    big = to_bytes(make_dataset(rows=2000, cols=2000))  # 8 MB
    assert ingest.ingest_bytes(settings, None, big).ok
    (tmpfs / "ballast").write_bytes(b"\0" * (6 * 1024 * 1024))  # less than 8 MB left
    out = ingest.ingest_bytes(settings, None, to_bytes(make_dataset(rows=2000, cols=2000)))
    assert out.status == ingest.OUT_OF_RESOURCES and out.error == "cannot write to storage"
    assert not list((tmpfs / "storage" / "tmp").iterdir()), "partial file left on a full disk"
    assert len(list((tmpfs / "storage" / "studies").rglob("*.dcm"))) == 1


def test_config_show_masks_broker_and_env_secrets(tmp_path: Path) -> None:
    """tests/test_config.py covers tokens and the database password in the file; here: the broker URL
    and secrets that come from the environment."""
    f = tmp_path / "c.toml"
    f.write_text("[queue]\nbroker_url = 'redis://:brokerpw42@redis:6379/0'\n")
    env = {**os.environ, "DIFF3M_WEB__TOKEN": "envwebtoken77", "DIFF3M_FHIR__TOKEN": "envfhirtoken88",
           "DIFF3M_FHIR__AUTH": "bearer", "DIFF3M_FHIR__BASE_URL": "http://fhir",
           "DIFF3M_DATABASE__URL": "postgresql://u:envdbpw99@db/x"}
    out = subprocess.run([sys.executable, "-m", "diff3m", "config", "show", "--config", str(f)],
                         capture_output=True, text=True, check=True, env=env).stdout
    for secret in ("brokerpw42", "envwebtoken77", "envfhirtoken88", "envdbpw99"):
        assert secret not in out
    data = json.loads(out)
    broker = data["queue"]["broker_url"]
    assert broker.startswith("redis://:") and broker.endswith("@redis:6379/0")


def test_audit_policy_fails_only_on_direct_dependencies(tmp_path: Path) -> None:
    report = {"dependencies": [
        {"name": "pydicom", "version": "3.0.0", "vulns": [{"id": "GHSA-x", "fix_versions": ["3.0.2"]}]},
        {"name": "some-transitive", "version": "1.0", "vulns": [{"id": "PYSEC-1", "fix_versions": []}]},
        {"name": "fastapi", "version": "0.110", "vulns": []},
    ]}
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    failing, reported = failing_findings(report, pyproject)
    assert [f.name for f in failing] == ["pydicom"]
    assert sorted(f.name for f in reported) == ["pydicom", "some-transitive"]
