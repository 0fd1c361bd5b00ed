"""`diff3m scp` (SQLite, the single-machine database) under kill -9 during ingest and under load:
every instance answered Success is on disk and in the database, the study still assembles."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pydicom
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from diff3m.db.models import Instance, Study
from diff3m.db.session import session_scope
from diff3m.node import storage
from tests import dicom_factory
from tests.e2e.conftest import write_config
from tests.reliability.conftest import NodeProcs, SendReport, rng, rounds, send_datasets

pytestmark = pytest.mark.slow

N_INSTANCES = 50


@pytest.fixture(scope="module")
def scp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcs]:
    """A `diff3m scp` on SQLite with a 1 s quiet period (no model: the listener and the sweeper only)."""
    root = tmp_path_factory.mktemp("ingest-faults")
    cfg = write_config(root / "node", checkpoint="builtin:demo", destinations=[], routing=[])
    nodes = NodeProcs(cfg)
    nodes.start("scp", wait_port=cfg.dicom_port)
    try:
        yield nodes
    finally:
        nodes.stop_all()


def _study(n: int, rows: int = 16) -> list[Dataset]:
    uid = pydicom.uid.generate_uid()
    return [dicom_factory.make_dataset(rows=rows, cols=rows, bits=12, view_position="PA", study_uid=uid,
                                       seed=i) for i in range(n)]


def _db_instances(nodes: NodeProcs, study_uid: str) -> dict[str, str]:
    """SOP Instance UID -> stored relative path, for one study."""
    with session_scope(_url(nodes)) as s:
        rows = s.execute(select(Instance.sop_instance_uid, Instance.path).join(Study)
                         .where(Study.study_uid == study_uid)).all()
    return {r[0]: r[1] for r in rows}


def _url(nodes: NodeProcs) -> str:
    return f"sqlite:///{nodes.cfg.root / 'node.sqlite'}"


def _status(nodes: NodeProcs, study_uid: str) -> str | None:
    with session_scope(_url(nodes)) as s:
        st = s.scalar(select(Study.status).where(Study.study_uid == study_uid))
    return str(st) if st is not None else None


def _assert_durable(nodes: NodeProcs, report: SendReport, study_uid: str) -> None:
    """Every acknowledged instance: a DB row and a complete file that parses to the same instance."""
    rows = _db_instances(nodes, study_uid)
    root = nodes.cfg.root / "storage"
    missing = report.succeeded - set(rows)
    assert not missing, f"{len(missing)} acknowledged instances lost from the database"
    for uid, rel in rows.items():
        path = storage.resolve(root, rel)
        ds = pydicom.dcmread(path)  # complete: parses, pixels all there
        assert str(ds.SOPInstanceUID) == uid
        assert len(ds.PixelData) == int(ds.Rows) * int(ds.Columns) * 2


def _wait_status(nodes: NodeProcs, study_uid: str, wanted: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _status(nodes, study_uid) == wanted:
            return
        time.sleep(0.2)
    pytest.fail(f"study {study_uid} not {wanted} after {timeout}s (is {_status(nodes, study_uid)})")


@pytest.mark.timeout(300 + 30 * rounds(3))
def test_kill9_scp_during_ingest_loses_nothing_acknowledged(scp: NodeProcs) -> None:
    r = rng()
    n = rounds(3)
    acknowledged = []
    for _ in range(n):
        if "scp" not in scp.procs:
            scp.start("scp", wait_port=scp.cfg.dicom_port)
        dss = _study(N_INSTANCES)
        study_uid = str(dss[0].StudyInstanceUID)
        kill_after = r.randint(1, N_INSTANCES - 2)
        reached = threading.Event()

        def on_sent(i: int, kill_after: int = kill_after, reached: threading.Event = reached) -> None:
            if i + 1 >= kill_after:
                reached.set()

        def killer(reached: threading.Event = reached) -> None:
            reached.wait(60)
            time.sleep(r.uniform(0, 0.01))  # somewhere inside the next C-STORE(s)
            scp.kill9("scp")

        t = threading.Thread(target=killer)
        t.start()
        report = send_datasets(scp.cfg.dicom_port, dss, on_sent=on_sent)
        t.join(60)
        assert report.aborted, "the kill did not interrupt the send"
        assert kill_after <= len(report.succeeded) < N_INSTANCES
        acknowledged.append(len(report.succeeded))
        scp.start("scp", wait_port=scp.cfg.dicom_port)
        _assert_durable(scp, report, study_uid)
        assert not list((scp.cfg.root / "storage" / "tmp").glob("*.part")), "partial file left after restart"
        # the modality sends the study again: everything is accepted, duplicates once
        again = send_datasets(scp.cfg.dicom_port, dss)
        assert len(again.succeeded) == N_INSTANCES, again
        assert len(_db_instances(scp, study_uid)) == N_INSTANCES
        _wait_status(scp, study_uid, "queued")  # assembled and handed to the pipeline
    print(f"scp kill -9 during ingest: {n} rounds, acknowledged before the kill: {acknowledged}")


def test_eight_concurrent_associations_no_failed_store(scp: NodeProcs) -> None:
    if "scp" not in scp.procs:
        scp.start("scp", wait_port=scp.cfg.dicom_port)
    for _ in range(rounds(2)):
        studies = [_study(N_INSTANCES, rows=32) for _ in range(8)]
        reports: list[SendReport] = [SendReport() for _ in studies]

        def push(i: int, reports: list[SendReport] = reports, studies: list[list[Dataset]] = studies) -> None:
            reports[i] = send_datasets(scp.cfg.dicom_port, studies[i], aet=f"MOD{i}")

        threads = [threading.Thread(target=push, args=(i,)) for i in range(8)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        took = time.perf_counter() - t0
        for rep, dss in zip(reports, studies, strict=True):
            assert not rep.aborted and len(rep.succeeded) == N_INSTANCES, rep.statuses
            assert len(_db_instances(scp, str(dss[0].StudyInstanceUID))) == N_INSTANCES
        print(f"load: 8 x {N_INSTANCES} instances in {took:.1f} s ({8 * N_INSTANCES / took:.0f}/s)")
