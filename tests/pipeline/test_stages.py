"""Pipeline stages over ids, without Celery: idempotent, batched, superseding on re-evaluation."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from diff3m.config import Settings, load_settings
from diff3m.db.models import (
    Delivery,
    EhrSnapshot,
    InferenceResult,
    OutputObject,
    Study,
    StudyStatus,
)
from diff3m.db.session import session_scope
from diff3m.node.assembly import complete_quiet_studies
from diff3m.node.ingest import ingest_bytes
from diff3m.pipeline import stages
from tests.dicom_factory import make_dataset, to_bytes
from tests.services import assert_dciodvfy_clean


@pytest.fixture
def settings(tmp_path: Path, sqlite_url: str, tiny_checkpoint: Path) -> Settings:
    return load_settings(None, node={"storage_dir": str(tmp_path / "st"), "min_free_disk_mb": 1,
                                     "study_quiet_seconds": 0},
                         database={"url": sqlite_url},
                         model={"checkpoint": str(tiny_checkpoint), "device": "cpu", "batch_size": 4},
                         destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 1}],
                         routing=[{"name": "r", "send": "results", "to": "pacs"}])


def _receive(settings: Settings, study_uid: str, seed: int, view: str = "PA") -> None:
    ds = make_dataset(rows=80, cols=72, study_uid=study_uid, view_position=view, seed=seed)
    assert ingest_bytes(settings, settings.database.url, to_bytes(ds), "MOD").ok


def _run_to_delivery(settings: Settings, ids: list[int]) -> list[stages.Next]:
    url = settings.database.url
    nexts = []
    for sid in ids:
        with session_scope(url) as s:
            rev = s.get(Study, sid).revision
        nxt = stages.fetch_ehr(settings, sid, rev)
        assert nxt is not None and nxt.stage == "infer"
    # one infer call scores every waiting study in one batch
    built = stages.infer(settings, ids[0], rev)
    assert sorted(n.study_id for n in built) == sorted(ids)
    for n in built:
        nxt = stages.build_outputs(settings, n.study_id, n.revision)
        assert nxt is not None
        nexts.append(nxt)
    return nexts


def test_stages_batch_idempotent_and_supersede(settings):
    url = settings.database.url
    uids = [generate_uid() for _ in range(3)]
    for i, uid in enumerate(uids):
        _receive(settings, uid, seed=i)
    _receive(settings, uids[0], seed=9, view="LL")  # a lateral is recorded, never scored
    ids = complete_quiet_studies(url, 0)
    assert len(ids) == 3

    nexts = _run_to_delivery(settings, ids)
    with session_scope(url) as s:
        assert s.scalar(select(func.count()).select_from(InferenceResult)) == 3
        assert s.scalar(select(func.count()).select_from(EhrSnapshot)) == 3
        statuses = {st.status for st in s.scalars(select(Study))}
        assert statuses == {StudyStatus.DELIVERING}
        first_outputs = {o.sop_instance_uid for o in s.scalars(select(OutputObject))}
        assert len(first_outputs) == 6
        deliveries = s.scalars(select(Delivery)).all()
        assert len(deliveries) == 3 and all(d.payload["output_ids"] for d in deliveries)
    for n in nexts:
        assert len(n.delivery_ids) == 1

    # running a finished stage again is a no-op: no new rows, no second delivery
    with session_scope(url) as s:
        sid = s.scalar(select(Study.id).where(Study.study_uid == uids[0]))
    assert stages.fetch_ehr(settings, sid, 0) is None
    assert stages.infer(settings, sid, 0) == []
    assert stages.build_outputs(settings, sid, 0) is None
    with session_scope(url) as s:
        assert s.scalar(select(func.count()).select_from(Delivery)) == 3

    # every object we wrote is valid DICOM in the source study
    with session_scope(url) as s:
        study_uid = s.get(Study, sid).study_uid
        for obj in s.scalars(select(OutputObject).where(OutputObject.study_id == sid)):
            path = Path(settings.node.storage_dir) / obj.path
            assert pydicom.dcmread(path).StudyInstanceUID == study_uid
            assert_dciodvfy_clean(path)

    # a late instance re-opens the study: revision 1 gets new outputs, revision 0's are superseded
    _receive(settings, uids[0], seed=11)
    assert complete_quiet_studies(url, 0) == [sid]
    with session_scope(url) as s:
        assert s.get(Study, sid).revision == 1
    assert stages.fetch_ehr(settings, sid, 0) is None  # stale revision
    assert stages.fetch_ehr(settings, sid, 1) is not None
    assert [n.study_id for n in stages.infer(settings, sid, 1)] == [sid]
    assert stages.build_outputs(settings, sid, 1) is not None
    with session_scope(url) as s:
        rows = s.scalars(select(OutputObject).where(OutputObject.study_id == sid)).all()
        old = [o for o in rows if o.revision == 0]
        new = [o for o in rows if o.revision == 1]
        assert len(old) == 2 and all(o.superseded for o in old)
        assert len(new) == 2 and not any(o.superseded for o in new)
        assert not {o.sop_instance_uid for o in new} & first_outputs
        sr = next(o for o in new if o.kind == "sr")
    sr_ds = pydicom.dcmread(Path(settings.node.storage_dir) / sr.path)
    predecessors = [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                    for i in sr_ds.PredecessorDocumentsSequence[0].ReferencedSeriesSequence]
    assert predecessors and predecessors[0] in first_outputs


def test_study_without_frontal_is_skipped(settings):
    uid = generate_uid()
    _receive(settings, uid, seed=1, view="LL")
    assert complete_quiet_studies(settings.database.url, 0) == []
    with session_scope(settings.database.url) as s:
        assert s.scalar(select(Study.status)) == StudyStatus.SKIPPED


def test_infer_claims_only_what_the_batch_scores(settings):
    small = settings.model_copy(update={"model": settings.model.model_copy(update={"batch_size": 2})})
    for i in range(3):
        _receive(small, generate_uid(), seed=20 + i)
    ids = complete_quiet_studies(small.database.url, 0)
    for sid in ids:
        assert stages.fetch_ehr(small, sid, 0) is not None
    first = stages.infer(small, ids[0], 0)
    assert len(first) == 2
    with session_scope(small.database.url) as s:
        waiting = s.scalars(select(Study).where(Study.status == StudyStatus.INFERRING)).all()
        assert len(waiting) == 1 and waiting[0].claimed_by is None  # not held by a batch that skipped it
        left = waiting[0].id
    assert [n.study_id for n in stages.infer(small, left, 0)] == [left]
