"""Orthanc as a sender (its REST API C-STOREs to us) and as an export destination through the outbox."""

from __future__ import annotations

import urllib.request
from datetime import timedelta
from pathlib import Path

import pydicom
from sqlalchemy import select

from diff3m.config import load_settings
from diff3m.db.models import Delivery, DeliveryKind, DeliveryStatus, Instance, utcnow
from diff3m.db.session import session_scope
from diff3m.node import outbox
from diff3m.node.export import send_delivery
from diff3m.node.ingest import ingest_bytes
from diff3m.node.scp import start_listener
from tests.dicom_factory import make_dataset, to_bytes, write_file
from tests.node.samples import CASES, make_case_file
from tests.services import Orthanc, free_port, orthanc_server


def _upload(orthanc: Orthanc, path: Path) -> str:
    req = urllib.request.Request(orthanc.url + "/instances", data=path.read_bytes(), method="POST",
                                 headers={"Content-Type": "application/dicom"})
    with urllib.request.urlopen(req, timeout=30) as r:
        import json

        return str(json.loads(r.read())["ID"])


def test_orthanc_sends_to_us(tmp_path: Path, sqlite_url: str) -> None:
    port = free_port()
    node = {"storage_dir": str(tmp_path / "st"), "host": "127.0.0.1", "port": port,
            "allowed_calling_aets": ["ORTHANC"], "min_free_disk_mb": 1}
    settings = load_settings(None, node=node,
                             database={"url": sqlite_url})
    lst = start_listener(settings)
    try:
        with orthanc_server({"diff3m": ("DIFF3M", "127.0.0.1", port)}) as orthanc:
            lossless = next(c for c in CASES if c.name == "jpegls-lossless")
            files = [write_file(tmp_path / "a.dcm", rows=16, cols=16, bits=16),
                     make_case_file(lossless, tmp_path / "c")[0]]
            ids = [_upload(orthanc, f) for f in files]
            orthanc.post("/modalities/diff3m/store", {"Resources": ids, "Synchronous": True})
    finally:
        lst.stop()
    with session_scope(sqlite_url) as s:
        rows = s.scalars(select(Instance)).all()
    want = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    assert {r.sop_instance_uid for r in rows} == want
    assert all(r.calling_aet == "ORTHANC" for r in rows)
    for r in rows:
        assert pydicom.dcmread(Path(settings.node.storage_dir) / r.path).pixel_array.shape == (48, 40) \
            if r.transfer_syntax != "1.2.840.10008.1.2.1" else True


def test_outbox_backoff_dead_letter_retry_then_orthanc(tmp_path: Path, sqlite_url: str) -> None:
    closed = free_port()
    node = {"storage_dir": str(tmp_path / "st"), "network_timeout": 5, "acse_timeout": 5}
    delivery_cfg = {"max_attempts": 3, "backoff_seconds": 10, "backoff_max_seconds": 25}

    def cfg(port: int):
        return load_settings(None, node=node, database={"url": sqlite_url}, delivery=delivery_cfg,
                             destinations=[{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1",
                                            "port": port}])

    settings = cfg(closed)
    j2k = next(c for c in CASES if c.name == "j2k-lossless")
    blobs = [to_bytes(make_dataset(rows=16, cols=16, study_uid="1.2.77", sop_uid=f"1.2.77.{i}"))
             for i in range(3)]
    blobs.append(make_case_file(j2k, tmp_path / "j", study_uid="1.2.77", sop_uid="1.2.77.9")[0].read_bytes())
    outs = [ingest_bytes(settings, sqlite_url, b) for b in blobs]
    assert all(o.ok for o in outs)
    with session_scope(sqlite_url) as s:
        d = outbox.enqueue(s, DeliveryKind.DICOM, "pacs", {"instance_ids": [o.instance_id for o in outs]},
                           dedup_key="originals:1.2.77:pacs", max_attempts=3)
        again = outbox.enqueue(s, DeliveryKind.DICOM, "pacs", {}, dedup_key="originals:1.2.77:pacs")
        assert again.id == d.id
        delivery_id = d.id
    senders = {DeliveryKind.DICOM: send_delivery}
    now = utcnow()
    delays = []
    for attempt in range(1, 4):
        results = outbox.process_due(settings, senders, now=now)
        assert [r[0] for r in results] == [delivery_id]
        with session_scope(sqlite_url) as s:
            row = s.get(Delivery, delivery_id)
            assert row is not None and row.attempts == attempt
            assert "AssociationFailed" in (row.last_error or "")
            if attempt < 3:
                assert row.status == DeliveryStatus.PENDING
                delay = (row.next_attempt_at.replace(tzinfo=None) - now.replace(tzinfo=None)).total_seconds()
                delays.append(delay)
                # not due before the backoff: nothing claimed
                assert outbox.process_due(settings, senders, now=now + timedelta(seconds=delay - 1)) == []
                now = now + timedelta(seconds=delay + 0.001)
            else:
                assert row.status == DeliveryStatus.DEAD
    # exponential with jitter in [d/2, d]: d = 10 then 20
    assert 5 <= delays[0] <= 10 and 10 <= delays[1] <= 20
    assert outbox.process_due(settings, senders, now=now + timedelta(days=1)) == []  # dead stays dead
    with session_scope(sqlite_url) as s:
        assert [x.id for x in outbox.list_deliveries(s, status=DeliveryStatus.DEAD)] == [delivery_id]
        outbox.retry(s, delivery_id)
    with orthanc_server() as orthanc:
        results = outbox.process_due(cfg(orthanc.dicom_port), senders)
        assert results == [(delivery_id, DeliveryStatus.DONE)]
        assert orthanc.sop_instance_uids() == {"1.2.77.0", "1.2.77.1", "1.2.77.2", "1.2.77.9"}
        syntaxes = set()
        for oid in orthanc.instances():
            with urllib.request.urlopen(f"{orthanc.url}/instances/{oid}/metadata/TransferSyntax") as r:
                syntaxes.add(r.read().decode())
        assert syntaxes == {"1.2.840.10008.1.2.1", j2k.uid}  # sent as stored, not re-encoded
    with session_scope(sqlite_url) as s:
        row = s.get(Delivery, delivery_id)
        assert row is not None and row.status == DeliveryStatus.DONE and row.delivered_at is not None
