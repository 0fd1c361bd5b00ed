"""Group commit: concurrent ingests share commits, every row lands, duplicates stay idempotent."""

from __future__ import annotations

import threading

from pydicom.uid import generate_uid
from sqlalchemy import func, select

from diff3m.config import load_settings
from diff3m.db.models import Instance, Study
from diff3m.db.session import session_scope
from diff3m.node.ingest import ingest_bytes
from tests.dicom_factory import make_dataset, to_bytes


def test_concurrent_ingest_commits_every_row_once(tmp_path, sqlite_url):
    settings = load_settings(None, node={"storage_dir": str(tmp_path / "st"), "min_free_disk_mb": 1},
                             database={"url": sqlite_url})
    study = generate_uid()
    blobs = [to_bytes(make_dataset(rows=32, cols=32, study_uid=study, seed=i)) for i in range(48)]
    outcomes: list = []

    def send(chunk: list[bytes]) -> None:
        for b in chunk:
            outcomes.append(ingest_bytes(settings, sqlite_url, b, "MOD"))

    # 8 senders, and every object sent twice (by two different threads) at once
    threads = [threading.Thread(target=send, args=(blobs[i % 4::4],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outcomes) == 96 and all(o.ok for o in outcomes)
    assert sum(o.duplicate for o in outcomes) == 48
    with session_scope(sqlite_url) as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == 48
        assert s.scalar(select(func.count()).select_from(Study)) == 1
    stored = [p for p in (tmp_path / "st").rglob("*.dcm")]
    assert len(stored) == 48 and not list((tmp_path / "st" / "tmp").glob("*"))


def test_one_batch_of_mixed_studies_reopens_once_and_dedupes(tmp_path, sqlite_url):
    """The batch writer: a completed study re-opened once, a new study created, the same SOP twice
    in the batch stored once (the later job a duplicate), an already stored SOP left as it was."""
    from datetime import UTC, datetime

    from diff3m.db.models import AuditEvent, StudyStatus
    from diff3m.db.session import get_engine
    from diff3m.node import ingest, storage

    settings = load_settings(None, node={"storage_dir": str(tmp_path / "st"), "min_free_disk_mb": 1},
                             database={"url": sqlite_url})
    old = to_bytes(make_dataset(rows=8, cols=8, study_uid="1.5.1", sop_uid="1.5.1.1"))
    assert ingest_bytes(settings, sqlite_url, old).ok
    with session_scope(sqlite_url) as s:
        s.scalars(select(Study)).one().status = StudyStatus.DONE
    root = tmp_path / "st"
    blobs = [old,  # already stored
             to_bytes(make_dataset(rows=8, cols=8, study_uid="1.5.1", sop_uid="1.5.1.2")),  # late: re-opens
             to_bytes(make_dataset(rows=8, cols=8, study_uid="1.5.1", sop_uid="1.5.1.3")),
             to_bytes(make_dataset(rows=8, cols=8, study_uid="1.5.2", sop_uid="1.5.2.1")),  # new study
             to_bytes(make_dataset(rows=8, cols=8, study_uid="1.5.2", sop_uid="1.5.2.1"))]  # same SOP again
    jobs = []
    for b in blobs:
        info = ingest.parse(b)
        rel = storage.instance_relpath(info.study_uid, info.series_uid, info.sop_instance_uid)
        tmp = storage.write_temp(root, b)
        jobs.append(ingest._Job(info, root, tmp, rel, len(b), "MOD", datetime.now(UTC)))
    with get_engine(sqlite_url).begin() as conn:
        out = ingest._write_batch(conn, jobs)
    assert [o.duplicate for o in out] == [True, False, False, False, True]
    assert [o.reopened for o in out] == [False, True, False, False, False]
    assert out[4].instance_id == out[3].instance_id and out[2].study_id == out[1].study_id
    with session_scope(sqlite_url) as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == 4
        studies = {st.study_uid: st for st in s.scalars(select(Study))}
        assert (studies["1.5.1"].status, studies["1.5.1"].revision) == (StudyStatus.RECEIVING, 1)
        assert studies["1.5.2"].revision == 0
        assert s.scalar(select(func.count()).select_from(AuditEvent)) == 1
    assert sorted(p.name for p in root.rglob("*.dcm")) == ["1.5.1.1.dcm", "1.5.1.2.dcm", "1.5.1.3.dcm",
                                                            "1.5.2.1.dcm"]
    assert [j.tmp.exists() for j in jobs] == [True, False, False, False, True]  # the handler drops these
