"""The pipeline's stages as plain functions over ids: fetch EHR, infer, build outputs, deliver.

Each stage reads what it needs from the database, claims the study for the stage, does its work
and moves the study on. Work for a stale revision or a study already past the stage is a no-op,
so every stage is idempotent and safe to run twice (the sweeper and Celery redelivery do that).
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from diff3m.config import Settings
from diff3m.db.models import (
    DeliveryKind,
    EhrSnapshot,
    InferenceResult,
    Instance,
    OutputObject,
    Study,
    StudyStatus,
)
from diff3m.db.session import session_scope
from diff3m.node import storage
from diff3m.pipeline import state
from diff3m.pipeline.routing import RouteFacts, plan_routes
from diff3m.pipeline.sources import read_dataset
from diff3m.pipeline.triage import priority_for
from diff3m.records import EhrRecord, Roi, ScoreResult

if TYPE_CHECKING:
    from pydicom import Dataset

log = logging.getLogger(__name__)

LEASE = {"ehr": timedelta(minutes=5), "infer": timedelta(minutes=20), "build": timedelta(minutes=5)}
MAX_FRONTAL = 4  # frontal images evaluated per study (the study score is their maximum)
ROUTE_TAGS = ("Modality", "BodyPartExamined", "ViewPosition", "StationName", "InstitutionName",
              "Manufacturer", "SOPClassUID")


@dataclass(frozen=True)
class Next:
    """What a stage asks the caller (a Celery task) to enqueue next."""

    stage: str  # "infer" | "build" | "deliver" | ""
    study_id: int
    revision: int
    delivery_ids: tuple[int, ...] = ()


def _frontal(session: Session, study: Study) -> list[Instance]:
    rows = session.scalars(
        select(Instance)
        .where(Instance.study_id == study.id, Instance.frontal.is_(True))
        .order_by(Instance.id)
    ).all()
    return list(rows)[-MAX_FRONTAL:]


def _route_facts(study: Study, ds: Dataset, **result: object) -> RouteFacts:
    """Routing facts from the dataset the stage already read (no second read of the file)."""
    tags = {k: str(ds.get(k, "")) for k in ROUTE_TAGS if k in ds}
    return RouteFacts(tags=tags, calling_aet=study.calling_aet or "", **result)  # type: ignore[arg-type]


# --- stage 1: EHR ------------------------------------------------------------------------


def fetch_ehr(settings: Settings, study_id: int, revision: int) -> Next | None:
    """Fetch the study's EHR (FHIR, DICOM fallback) into an EhrSnapshot, forward originals."""
    url = settings.database.url
    with session_scope(url) as s:
        if not state.claim(s, study_id, revision, (StudyStatus.QUEUED, StudyStatus.FETCHING_EHR),
                           LEASE["ehr"]):
            return None
        study = s.get(Study, study_id)
        assert study is not None
        study.status = StudyStatus.FETCHING_EHR
        frontal = _frontal(s, study)
        if not frontal:
            state.advance(s, study, StudyStatus.SKIPPED)
            state.audit(s, "study_skipped", study.id, reason="no frontal image")
            return None
        t0 = time.perf_counter()
        ds = read_dataset(settings, study, frontal[-1])
        ehr = _ehr_for(settings, ds)
        snap = s.scalar(select(EhrSnapshot).where(EhrSnapshot.study_id == study.id,
                                                  EhrSnapshot.revision == revision))
        if snap is None:
            snap = EhrSnapshot(study_id=study.id, revision=revision)
            s.add(snap)
        snap.available, snap.reason = ehr.available, ehr.reason
        snap.values, snap.sources = dict(ehr.values), {k: list(v) for k, v in ehr.sources.items()}
        originals = _plan_originals(s, settings, study, ds)
        state.advance(s, study, StudyStatus.INFERRING, "ehr", time.perf_counter() - t0)
    return Next("infer", study_id, revision, tuple(originals))


def _ehr_for(settings: Settings, ds: object) -> EhrRecord:
    from diff3m.fhir.ehr import StudyContext
    from diff3m.fhir.ehr import fetch_ehr as fhir_fetch_ehr

    return fhir_fetch_ehr(settings, StudyContext.from_dataset(ds))


def _plan_originals(s: Session, settings: Settings, study: Study, ds: Dataset) -> list[int]:
    """Deliveries for routing rules that forward originals without looking at the result."""
    if not settings.routing:
        return []
    facts = _route_facts(study, ds)
    routes = plan_routes(settings.routing, facts, with_result=False)
    ids = [i.id for i in study.instances]
    return [
        _enqueue(s, settings, study, DeliveryKind.DICOM, r.to, {"instance_ids": ids},
                 f"{study.study_uid}:{study.revision}:originals:{r.to}")
        for r in routes if r.send == "originals"
    ]


def _enqueue(s: Session, settings: Settings, study: Study, kind: DeliveryKind, destination: str,
             payload: dict[str, Any], key: str) -> int:
    from diff3m.node.outbox import enqueue

    delivery = enqueue(s, kind=kind, destination=destination, payload=payload, dedup_key=key,
                       study_id=study.id, max_attempts=settings.delivery.max_attempts)
    s.flush()
    return int(delivery.id)


# --- stage 2: inference (batched) ----------------------------------------------------------


def infer(settings: Settings, study_id: int, revision: int) -> list[Next]:
    """Score the study together with other studies waiting for inference, up to the batch size."""
    from diff3m.pipeline.model_cache import scorer_for

    url = settings.database.url
    with session_scope(url) as s:
        waiting = s.execute(
            select(Study.id, Study.revision).where(Study.status == StudyStatus.INFERRING,
                                                   Study.id != study_id).order_by(Study.completed_at)
            .limit(settings.model.batch_size * 2)
        ).all()
        candidates = [(study_id, revision)] + [(r[0], r[1]) for r in waiting]
        claimed: list[tuple[int, int]] = []
        for i, r in candidates:  # claim only what this batch will score: a claim is a promise
            if len(claimed) >= settings.model.batch_size:
                break
            if state.claim(s, i, r, (StudyStatus.INFERRING,), LEASE["infer"]):
                claimed.append((i, r))
        if not claimed:
            return []
        scorer = scorer_for(settings)
        items, owners = [], []
        for sid, rev in claimed:
            study = s.get(Study, sid)
            assert study is not None
            snap = s.scalar(
                select(EhrSnapshot).where(EhrSnapshot.study_id == sid, EhrSnapshot.revision == rev)
            )
            ehr = _ehr_record(snap)
            for inst in _frontal(s, study):
                from diff3m.models.preprocess import prepare_dicom

                try:
                    prepared = prepare_dicom(read_dataset(settings, study, inst))
                except Exception as err:  # an image we cannot decode fails its study, not the batch
                    log.warning("cannot prepare instance %s: %s", inst.sop_instance_uid, err)
                    continue
                items.append((prepared, ehr))
                owners.append((sid, rev, inst.id))
        t0 = time.perf_counter()
        results = scorer.score_batch(
            items, steps=settings.model.steps, noise_level=settings.model.noise_level,
            use_ehr=settings.model.use_ehr, threshold=settings.model.threshold,
        ) if items else []
        per_image = (time.perf_counter() - t0) / max(len(items), 1)
        best: dict[tuple[int, int], tuple[int, ScoreResult]] = {}
        for (sid, rev, inst_id), res in zip(owners, results, strict=True):
            if (sid, rev) not in best or res.score > best[(sid, rev)][1].score:
                best[(sid, rev)] = (inst_id, res)
        nexts = []
        for sid, rev in claimed:
            study = s.get(Study, sid)
            assert study is not None
            if (sid, rev) not in best:
                state.fail(s, study, "no frontal image could be decoded")
                continue
            inst_id, res = best[(sid, rev)]
            _store_result(s, settings, study, rev, inst_id, res)
            state.advance(s, study, StudyStatus.BUILDING, "infer", per_image)
            nexts.append(Next("build", sid, rev))
    return nexts


def _ehr_record(snap: EhrSnapshot | None) -> EhrRecord:
    if snap is None:
        return EhrRecord.unavailable("no EHR snapshot")
    return EhrRecord(values=dict(snap.values), sources=dict(snap.sources), available=snap.available,
                     reason=snap.reason)


def _store_result(s: Session, settings: Settings, study: Study, rev: int, inst_id: int,
                  res: ScoreResult) -> None:
    existing = s.scalar(select(InferenceResult).where(InferenceResult.study_id == study.id,
                                                      InferenceResult.revision == rev))
    if existing is not None:
        s.delete(existing)
        s.flush()
    s.add(InferenceResult(
        study_id=study.id, revision=rev, instance_id=inst_id, score=float(res.score),
        abnormal=bool(res.abnormal), threshold=float(res.threshold), model_name=res.model_name,
        model_version=res.model_version, ehr_used=res.ehr_used, map_data=_pack_map(res.anomaly_map),
        roi=res.roi.as_dict() if res.roi else {}, seconds=float(res.seconds),
        params={**res.params, "scores": {k: float(v) for k, v in res.scores.items()}},
    ))
    study.score, study.abnormal = float(res.score), bool(res.abnormal)
    study.priority = priority_for(res.score, res.abnormal, settings.triage)


MAP_MAX = 512  # anomaly maps are stored at most this many pixels on the long side


def _pack_map(amap: np.ndarray) -> bytes:
    m = np.asarray(amap, dtype=np.float32)
    step = max(1, int(np.ceil(max(m.shape) / MAP_MAX)))
    if step > 1:
        h, w = (m.shape[0] // step) * step, (m.shape[1] // step) * step
        m = m[:h, :w].reshape(h // step, step, w // step, step).max(axis=(1, 3))
    buf = io.BytesIO()
    np.save(buf, m.astype(np.float16))
    return buf.getvalue()


def unpack_map(data: bytes, rows: int, columns: int) -> np.ndarray:
    """A stored anomaly map resized (nearest) back to the source's rows x columns."""
    m = np.load(io.BytesIO(data)).astype(np.float32)
    ri = np.minimum((np.arange(rows) * m.shape[0] / rows).astype(int), m.shape[0] - 1)
    ci = np.minimum((np.arange(columns) * m.shape[1] / columns).astype(int), m.shape[1] - 1)
    return m[ri][:, ci]


# --- stage 3: outputs ----------------------------------------------------------------------


def build_outputs(settings: Settings, study_id: int, revision: int) -> Next | None:
    """Build the SR and heatmap SC, supersede older revisions' outputs, plan the deliveries."""
    from diff3m.pipeline.outputs import OutputRef, build_heatmap_sc, build_sr, render_overlay

    url = settings.database.url
    with session_scope(url) as s:
        if not state.claim(s, study_id, revision, (StudyStatus.BUILDING,), LEASE["build"]):
            return None
        study = s.get(Study, study_id)
        assert study is not None
        t0 = time.perf_counter()
        row = s.scalar(select(InferenceResult).where(InferenceResult.study_id == study_id,
                                                     InferenceResult.revision == revision))
        if row is None:  # the result vanished: infer again
            state.advance(s, study, StudyStatus.INFERRING)
            return Next("infer", study_id, revision)
        evaluated = s.get(Instance, row.instance_id)
        assert evaluated is not None
        frontal = _frontal(s, study)
        sources = [read_dataset(settings, study, i) for i in frontal]
        scored = next(d for d, i in zip(sources, frontal, strict=True) if i.id == evaluated.id)
        result = _score_result(row, int(scored.Rows), int(scored.Columns))
        snap = s.scalar(select(EhrSnapshot).where(EhrSnapshot.study_id == study_id,
                                                  EhrSnapshot.revision == revision))
        older = s.scalars(select(OutputObject).where(OutputObject.study_id == study_id,
                                                     OutputObject.revision < revision)).all()
        previous = [OutputRef(study.study_uid, o.series_uid, o.sop_instance_uid, SR_CLASS)
                    for o in older if o.kind == "sr"]
        try:
            sr = build_sr(sources, result, _ehr_record(snap), revision, previous=previous,
                          scored_uid=evaluated.sop_instance_uid)
            sc = build_heatmap_sc(scored, result, revision, overlay=render_overlay(scored, result))
        except ValueError as err:  # bad input (SourceError included): record it, do not retry
            state.fail(s, study, f"cannot build outputs: {err}")
            return None
        outputs = [_save_output(s, settings, study, revision, "sr", sr),
                   _save_output(s, settings, study, revision, "sc", sc)]
        for old in older:
            old.superseded = True
        delivery_ids = _plan_result_deliveries(s, settings, study, scored, outputs)
        state.advance(s, study, StudyStatus.DELIVERING, "build", time.perf_counter() - t0)
        if not delivery_ids:
            state.settle_deliveries(s, study)
    return Next("deliver", study_id, revision, tuple(delivery_ids))


SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR Storage


def _score_result(row: InferenceResult, rows: int, columns: int) -> ScoreResult:
    roi = Roi(**row.roi) if row.roi else None
    params = dict(row.params or {})
    scores = params.pop("scores", {})
    amap = unpack_map(row.map_data, rows, columns) if row.map_data else np.zeros((rows, columns), np.float32)
    return ScoreResult(score=row.score, abnormal=row.abnormal, threshold=row.threshold, anomaly_map=amap,
                       scores=scores, roi=roi, model_name=row.model_name, model_version=row.model_version,
                       ehr_used=row.ehr_used, seconds=row.seconds, params=params)


def _save_output(s: Session, settings: Settings, study: Study, revision: int, kind: str,
                 ds: object) -> OutputObject:
    from pydicom import Dataset

    assert isinstance(ds, Dataset)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    uid, series = str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID)
    relpath = storage.instance_relpath(study.study_uid, series, uid)
    storage.write_durable(Path(settings.node.storage_dir), relpath, buf.getvalue())
    obj = s.scalar(select(OutputObject).where(OutputObject.sop_instance_uid == uid))
    if obj is None:
        obj = OutputObject(study_id=study.id, revision=revision, kind=kind, sop_instance_uid=uid,
                           series_uid=series, path=relpath)
        s.add(obj)
    obj.data = buf.getvalue()
    s.flush()
    return obj


def _plan_result_deliveries(s: Session, settings: Settings, study: Study, scored: Dataset,
                            outputs: list[OutputObject]) -> list[int]:
    ids: list[int] = []
    key = f"{study.study_uid}:{study.revision}"
    if settings.routing:
        facts = _route_facts(study, scored, abnormal=study.abnormal, score=study.score,
                             priority=str(study.priority))
        for r in plan_routes(settings.routing, facts, with_result=True):
            payload = ({"output_ids": [o.id for o in outputs]} if r.send == "results"
                       else {"instance_ids": [i.id for i in study.instances]})
            ids.append(_enqueue(s, settings, study, DeliveryKind.DICOM, r.to, payload,
                                f"{key}:{r.send}:{r.to}"))
    if settings.fhir.base_url and settings.fhir.write_observations:
        ids.append(_enqueue(s, settings, study, DeliveryKind.FHIR_OBSERVATION, "fhir",
                            {"sr_output": outputs[0].id}, f"{key}:fhir_observation"))
    if settings.fhir.base_url and settings.fhir.triage and study.accession_number and study.abnormal:
        ids.append(_enqueue(s, settings, study, DeliveryKind.FHIR_TRIAGE, "fhir",
                            {"priority": str(study.priority)}, f"{key}:fhir_triage"))
    return ids
