"""Durable ingest without the network: stored + recorded, duplicates idempotent, bad input refused cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import func, select

from diff3m.config import Settings, load_settings
from diff3m.db.migrate import upgrade
from diff3m.db.models import AuditEvent, Instance, Study, StudyStatus
from diff3m.db.session import session_scope
from diff3m.node import ingest, storage
from tests.dicom_factory import make_dataset, to_bytes

BASE = to_bytes(make_dataset(rows=16, cols=16, bits=12, view_position="LL", study_uid="1.2.3.4",
                             series_uid="1.2.3.4.1", sop_uid="1.2.3.4.1.1"))


def _count(url: str) -> tuple[int, int]:
    with session_scope(url) as s:
        return s.scalar(select(func.count(Instance.id))) or 0, s.scalar(select(func.count(Study.id))) or 0


def _files(settings: Settings) -> list[Path]:
    return [p for p in Path(settings.node.storage_dir).rglob("*") if p.is_file()]


def test_store_then_duplicate_is_idempotent(settings: Settings) -> None:
    url = settings.database.url
    first = ingest.ingest_bytes(settings, url, BASE, calling_aet="MODALITY")
    assert first.ok and not first.duplicate and first.path
    assert first.path == "studies/1.2.3.4/1.2.3.4.1/1.2.3.4.1.1.dcm"
    assert (Path(settings.node.storage_dir) / first.path).read_bytes() == BASE
    again = ingest.ingest_bytes(settings, url, BASE, calling_aet="MODALITY")
    assert again.ok and again.duplicate and again.instance_id == first.instance_id
    assert _count(url) == (1, 1)
    with session_scope(url) as s:
        inst = s.scalars(select(Instance)).one()
        assert (inst.view_position, inst.frontal, inst.calling_aet) == ("LL", False, "MODALITY")
        study = s.scalars(select(Study)).one()
        assert (study.patient_id, study.accession_number, study.status) == ("PAT001", "ACC0001", "receiving")


def test_late_instance_reopens_completed_study(settings: Settings) -> None:
    url = settings.database.url
    assert ingest.ingest_bytes(settings, url, BASE).ok
    with session_scope(url) as s:
        s.scalars(select(Study)).one().status = StudyStatus.DONE
    late = to_bytes(make_dataset(rows=16, cols=16, study_uid="1.2.3.4", series_uid="1.2.3.4.1",
                                 sop_uid="1.2.3.4.1.2"))
    out = ingest.ingest_bytes(settings, url, late)
    assert out.ok and out.reopened
    with session_scope(url) as s:
        study = s.scalars(select(Study)).one()
        assert (study.status, study.revision) == (StudyStatus.RECEIVING, 1)
        assert s.scalar(select(AuditEvent.kind)) == "study_reopened"


def test_non_conformant_uid_is_stored_under_a_hash(settings: Settings) -> None:
    ds = make_dataset(rows=8, cols=8)
    ds.StudyInstanceUID = "1.2.840.0113.../../x"  # leading zero and path characters, as seen in the wild
    out = ingest.ingest_bytes(settings, None, to_bytes(ds))
    assert out.ok and out.path
    assert ".." not in out.path and out.path.split("/")[1].startswith("h-")


@pytest.mark.parametrize(("mutate", "status"), [
    (lambda ds: delattr(ds, "SOPInstanceUID"), ingest.DATASET_MISMATCH),
    (lambda ds: delattr(ds, "StudyInstanceUID"), ingest.DATASET_MISMATCH),
    (lambda ds: delattr(ds, "PixelData"), ingest.DATASET_MISMATCH),
    (lambda ds: setattr(ds, "Rows", 4000), ingest.DATASET_MISMATCH),
    (lambda ds: setattr(ds, "SeriesInstanceUID", "1." * 40), ingest.DATASET_MISMATCH),
])
def test_missing_or_inconsistent_attributes_refused(settings: Settings, mutate, status: int) -> None:
    ds = make_dataset(rows=8, cols=8)
    mutate(ds)
    out = ingest.ingest_bytes(settings, None, to_bytes(ds))
    assert out.status == status and out.error
    assert _count(settings.database.url) == (0, 0)
    assert _files(settings) == []


def test_sop_class_outside_configuration_refused_for_stow(settings: Settings) -> None:
    ds = make_dataset(rows=8, cols=8, sop_class="1.2.840.10008.5.1.4.1.1.7")
    out = ingest.ingest_bytes(settings, None, to_bytes(ds))
    assert out.status == ingest.SOP_CLASS_NOT_SUPPORTED


def test_db_failure_leaves_no_file(tmp_path: Path, settings: Settings) -> None:
    broken = load_settings(None, node={"storage_dir": str(tmp_path / "s2")},
                           database={"url": f"sqlite:///{tmp_path / 'unmigrated.sqlite'}"})
    out = ingest.ingest_bytes(broken, None, BASE)
    assert out.status == ingest.OUT_OF_RESOURCES
    assert not [p for p in (tmp_path / "s2").rglob("*.dcm")]


_garbage = st.one_of(
    st.binary(max_size=400),
    st.integers(0, len(BASE) - 1).map(lambda n: BASE[:n]),  # truncated
    st.tuples(st.integers(0, len(BASE) - 1), st.binary(min_size=1, max_size=8)).map(  # corrupted bytes
        lambda t: BASE[:t[0]] + t[1] + BASE[t[0] + len(t[1]):]),
)


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_garbage)
def test_malformed_input_never_crashes_nor_half_writes(settings: Settings, data: bytes) -> None:
    out = ingest.ingest_bytes(settings, None, data)
    files = _files(settings)
    assert not [p for p in files if p.parent.name == "tmp"], "partial temp file left"
    if out.ok:  # a corruption that still parses and is complete is fine: stored whole, recorded
        assert out.path and (Path(settings.node.storage_dir) / out.path).read_bytes() in (data, BASE)
    else:
        assert out.status in (ingest.CANNOT_UNDERSTAND, ingest.DATASET_MISMATCH,
                              ingest.SOP_CLASS_NOT_SUPPORTED, ingest.TRANSFER_SYNTAX_NOT_SUPPORTED)
        assert out.error
        assert len(files) == _count(settings.database.url)[0]


def test_postgresql_concurrent_same_study(tmp_path: Path, postgres_url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    upgrade(postgres_url)
    s = load_settings(None, node={"storage_dir": str(tmp_path / "pg")}, database={"url": postgres_url})
    blobs = [to_bytes(make_dataset(rows=8, cols=8, study_uid="1.2.9", sop_uid=f"1.2.9.{i}"))
             for i in range(12)]
    with ThreadPoolExecutor(6) as pool:
        outs = list(pool.map(lambda b: ingest.ingest_bytes(s, postgres_url, b), blobs + blobs[:4]))
    assert all(o.ok for o in outs)
    assert sum(o.duplicate for o in outs) == 4
    assert _count(postgres_url) == (12, 1)


def test_uid_grammar() -> None:
    assert storage.is_valid_uid("1.2.840.10008.1.2")
    for bad in ("", "1", "1..2", "01.2", "1.2.", "1.2a", "1." * 40):
        assert not storage.is_valid_uid(bad)
    with pytest.raises(ValueError):
        storage.resolve(Path("/tmp/x"), "../etc/passwd")
