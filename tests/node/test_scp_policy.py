"""Who may associate: called/calling AE, host pinning, free-disk watermark, limits; TLS with dcmtk."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from diff3m.config import Settings
from diff3m.db.models import Instance
from diff3m.db.session import session_scope
from diff3m.node.scp import start_listener
from diff3m.node.scu import AssociationFailed, send_files
from diff3m.node.tls import client_context
from tests.dicom_factory import write_file
from tests.node.conftest import echoscu, storescu
from tests.services import require_tool


def _stored(settings: Settings) -> int:
    with session_scope(settings.database.url) as s:
        return s.scalar(select(func.count(Instance.id))) or 0


def test_calling_aet_allow_list_and_host_pinning(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(allowed_calling_aets=["MODALITY", "PINNED@127.0.0.1", "ELSEWHERE@10.9.9.9"])
    lst = start_listener(settings)
    try:
        assert echoscu(lst.port, aet="MODALITY").returncode == 0
        assert echoscu(lst.port, aet="PINNED").returncode == 0
        for aet in ("INTRUDER", "ELSEWHERE"):
            proc = echoscu(lst.port, aet=aet)
            assert proc.returncode != 0
            assert "Rejected Permanent" in proc.stderr and "Calling AE Title Not Recognized" in proc.stderr
        proc = echoscu(lst.port, aet="MODALITY", aec="NOT_US")
        assert "Called AE Title Not Recognized" in proc.stderr
    finally:
        lst.stop()


def test_unknown_ae_cannot_store(tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(allowed_calling_aets=["MODALITY"])
    lst = start_listener(settings)
    try:
        proc = storescu(lst.port, write_file(tmp_path / "a.dcm", rows=8, cols=8), aet="INTRUDER")
        assert proc.returncode != 0
    finally:
        lst.stop()
    assert _stored(settings) == 0


def test_disk_watermark_refuses_new_associations(tmp_path: Path,
                                                 make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(min_free_disk_mb=10**9)  # a petabyte free: never true here
    lst = start_listener(settings)
    try:
        proc = storescu(lst.port, write_file(tmp_path / "a.dcm", rows=8, cols=8))
        assert proc.returncode != 0
        assert "Rejected Transient" in proc.stderr and "Local Limit Exceeded" in proc.stderr, proc.stderr
    finally:
        lst.stop()
    assert _stored(settings) == 0


def test_sop_class_not_configured_is_rejected_at_negotiation(tmp_path: Path, settings: Settings) -> None:
    from tests.dicom_factory import SECONDARY_CAPTURE, make_dataset

    lst = start_listener(settings)
    try:
        ds = make_dataset(rows=8, cols=8, modality="CR", sop_class=SECONDARY_CAPTURE)
        proc = storescu(lst.port, write_file(tmp_path / "sc.dcm", ds))
        assert proc.returncode != 0
        err = proc.stderr.lower()
        assert "no presentation context" in err or "no acceptable presentation" in err, proc.stderr
    finally:
        lst.stop()
    assert _stored(settings) == 0


# --- TLS --------------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([require_tool("openssl"), *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A throwaway CA, a server certificate and a client certificate (RSA 2048, made with openssl)."""
    d = tmp_path / "pki"
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "2", "-subj", "/CN=Test CA", cwd=d)
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", cwd=d)
    return d


def test_tls_with_client_certificate(tmp_path: Path, pki: Path,
                                     make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(tls_cert=str(pki / "server.pem"), tls_key=str(pki / "server.key"),
                             tls_ca=str(pki / "ca.pem"))
    lst = start_listener(settings)
    f1 = write_file(tmp_path / "one.dcm", rows=8, cols=8)
    f2 = write_file(tmp_path / "two.dcm", rows=8, cols=8)
    f3 = write_file(tmp_path / "three.dcm", rows=8, cols=8)
    try:
        tls = ["+tls", str(pki / "client.key"), str(pki / "client.pem"), "+cf", str(pki / "ca.pem")]
        proc = storescu(lst.port, f1, extra=tls)
        assert proc.returncode == 0, proc.stderr
        assert _stored(settings) == 1
        # plain TCP to a TLS listener: refused
        assert storescu(lst.port, f2).returncode != 0
        # TLS without a client certificate: refused (certificate required)
        assert storescu(lst.port, f2, extra=["+tla", "+cf", str(pki / "ca.pem")]).returncode != 0
        assert _stored(settings) == 1
        # our own SCU over TLS, both ways
        ctx = client_context(pki / "ca.pem", pki / "client.pem", pki / "client.key")
        report = send_files([f3], "127.0.0.1", lst.port, "DIFF3M", ssl_context=ctx)
        assert len(report.sent) == 1
        with pytest.raises(AssociationFailed):
            send_files([f2], "127.0.0.1", lst.port, "DIFF3M", ssl_context=client_context(pki / "ca.pem"),
                       timeout=5)
        assert _stored(settings) == 2
    finally:
        lst.stop()
