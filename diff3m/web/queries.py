"""Reads and writes the web app makes through the database (the contract with every other process)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from diff3m.db.models import (
    PRIORITY_RANK,
    AuditEvent,
    Delivery,
    DeliveryStatus,
    EhrSnapshot,
    InferenceResult,
    Instance,
    OutputObject,
    Priority,
    Study,
    StudyStatus,
)
from diff3m.models.fields import DEFAULT_REGISTRY
from diff3m.web.schemas import (
    DeliveryOut,
    EhrField,
    ModelOut,
    OutputOut,
    StudyDetail,
    StudyList,
    StudySummary,
)

MAX_LIMIT = 500


class NotFound(LookupError):
    """No such study or delivery."""


class Conflict(RuntimeError):
    """The request does not fit the current state (e.g. rerun while still receiving)."""


@dataclass
class StudyFilter:
    """Worklist filters; every one optional."""

    status: list[StudyStatus] = field(default_factory=list)
    priority: list[Priority] = field(default_factory=list)
    date_from: str | None = None  # YYYYMMDD (StudyDate)
    date_to: str | None = None
    abnormal: bool | None = None
    q: str | None = None  # accession number or patient id prefix
    limit: int = 50
    offset: int = 0


def parse_date(value: str | None) -> str | None:
    """A DICOM DA (YYYYMMDD) from 'YYYY-MM-DD' or 'YYYYMMDD'; ValueError when neither."""
    if not value:
        return None
    v = value.strip()
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return datetime.strptime(v, fmt).date().strftime("%Y%m%d")
        except ValueError:
            continue
    raise ValueError(f"not a date (YYYY-MM-DD or YYYYMMDD): {value!r}")


def aware(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; every stored time is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _priority_rank() -> Any:
    return case({p.value: rank for p, rank in PRIORITY_RANK.items()}, value=Study.priority, else_=0)


def list_studies(session: Session, flt: StudyFilter) -> StudyList:
    """One page of studies, highest priority first, then highest score, then newest."""
    stmt = select(Study)
    if flt.status:
        stmt = stmt.where(Study.status.in_(flt.status))
    if flt.priority:
        stmt = stmt.where(Study.priority.in_(flt.priority))
    if flt.date_from:
        stmt = stmt.where(Study.study_date >= flt.date_from)
    if flt.date_to:
        stmt = stmt.where(Study.study_date <= flt.date_to)
    if flt.abnormal is not None:
        stmt = stmt.where(Study.abnormal.is_(flt.abnormal))
    if flt.q:
        like = flt.q.replace("%", "").replace("_", "") + "%"
        stmt = stmt.where(Study.accession_number.like(like) | Study.patient_id.like(like))
    total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    limit = max(1, min(flt.limit, MAX_LIMIT))
    offset = max(0, flt.offset)
    stmt = stmt.order_by(_priority_rank().desc(), Study.score.is_(None), Study.score.desc(),
                         Study.updated_at.desc(), Study.id.desc()).limit(limit).offset(offset)
    studies = list(session.scalars(stmt))
    ids = [s.id for s in studies]
    counts = dict(session.execute(  # type: ignore[arg-type]
        select(Instance.study_id, func.count()).where(Instance.study_id.in_(ids)).group_by(Instance.study_id)
    ).all()) if ids else {}
    results = _latest_results(session, ids)
    items = [_summary(s, results.get(s.id), counts.get(s.id, 0)) for s in studies]
    return StudyList(total=total, limit=limit, offset=offset, items=items)


def _latest_results(session: Session, study_ids: list[int]) -> dict[int, InferenceResult]:
    if not study_ids:
        return {}
    out: dict[int, InferenceResult] = {}
    rows = session.scalars(select(InferenceResult).where(InferenceResult.study_id.in_(study_ids))
                           .order_by(InferenceResult.revision))
    for r in rows:
        out[r.study_id] = r  # the highest revision wins
    return out


def _summary(s: Study, result: InferenceResult | None, n_instances: int) -> StudySummary:
    return StudySummary(
        study_uid=s.study_uid, patient_id=s.patient_id, accession_number=s.accession_number,
        study_date=s.study_date, modality=s.modality, status=s.status, priority=s.priority,
        score=s.score if s.score is not None else (result.score if result else None),
        abnormal=s.abnormal if s.abnormal is not None else (result.abnormal if result else None),
        threshold=result.threshold if result else None, revision=s.revision, instances=n_instances,
        has_heatmap=result is not None, error=s.error, updated_at=aware(s.updated_at),
    )


def get_study(session: Session, study_uid: str) -> Study:
    """The study with this StudyInstanceUID, or NotFound."""
    study = session.scalar(select(Study).where(Study.study_uid == study_uid))
    if study is None:
        raise NotFound(f"no study {study_uid}")
    return study


def latest_result(session: Session, study: Study) -> InferenceResult | None:
    """The inference result of the highest revision, if any."""
    return session.scalar(select(InferenceResult).where(InferenceResult.study_id == study.id)
                          .order_by(InferenceResult.revision.desc()).limit(1))


def field_names(extra: list[str] | None = None) -> list[str]:
    """Registry field names in order, then configured extra fields."""
    names = list(DEFAULT_REGISTRY.names)
    for name in extra or []:
        if name not in names:
            names.append(name)
    return names


def _ehr(snapshot: EhrSnapshot | None, names: list[str]) -> tuple[dict[str, Any], list[EhrField]]:
    values: dict[str, Any] = dict(snapshot.values or {}) if snapshot else {}
    raw_sources: dict[str, Any] = dict(snapshot.sources or {}) if snapshot else {}
    for name in values:
        if name not in names:
            names = [*names, name]
    sources = {n: _as_list(raw_sources.get(n)) for n in names}
    fields = [EhrField(name=n, value=values.get(n), sources=sources[n]) for n in names]
    ehr: dict[str, Any] = {n: values.get(n) for n in names}
    if snapshot is None:
        ehr.update(available=None, reason="EHR not fetched yet", fetched_at=None)
    else:
        fetched = aware(snapshot.fetched_at)
        ehr.update(available=snapshot.available, reason=snapshot.reason,
                   fetched_at=fetched.isoformat() if fetched else None)
    ehr["values"] = {n: values.get(n) for n in names}
    ehr["sources"] = sources
    return ehr, fields


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return [str(value)]


def _strings(value: Any) -> set[str]:
    """Every scalar inside a JSON payload, as text."""
    if isinstance(value, dict):
        return set().union(*(_strings(v) for v in value.values())) if value else set()
    if isinstance(value, list | tuple):
        return set().union(*(_strings(v) for v in value)) if value else set()
    return {str(value)}


def _carries(delivery: Delivery, out: OutputObject) -> bool:
    payload = delivery.payload or {}
    # the pipeline names outputs by id: {"outputs": [ids]} for DICOM, {"sr_output": id} for FHIR
    for key in ("outputs", "output_ids"):
        ids = payload.get(key)
        if isinstance(ids, list) and out.id in ids:
            return True
    if payload.get("sr_output") == out.id:
        return True
    found = _strings(payload)
    return out.sop_instance_uid in found or out.path in found


def _delivery_out(d: Delivery) -> DeliveryOut:
    return DeliveryOut(id=d.id, kind=d.kind, destination=d.destination, status=d.status, attempts=d.attempts,
                       max_attempts=d.max_attempts, last_error=d.last_error,
                       next_attempt_at=aware(d.next_attempt_at), delivered_at=aware(d.delivered_at),
                       payload=d.payload or {})


def study_detail(session: Session, study_uid: str, extra_fields: list[str] | None = None) -> StudyDetail:
    """Everything about one study: result, EHR used with sources, outputs, deliveries, timings."""
    study = get_study(session, study_uid)
    result = latest_result(session, study)
    n_instances = session.scalar(select(func.count()).where(Instance.study_id == study.id)) or 0
    snapshot = session.scalar(select(EhrSnapshot).where(EhrSnapshot.study_id == study.id)
                              .order_by(EhrSnapshot.revision.desc()).limit(1))
    ehr, ehr_fields = _ehr(snapshot, field_names(extra_fields))
    outputs = list(session.scalars(select(OutputObject).where(OutputObject.study_id == study.id)
                                   .order_by(OutputObject.revision.desc(), OutputObject.kind)))
    deliveries = list(session.scalars(select(Delivery).where(Delivery.study_id == study.id)
                                      .order_by(Delivery.id)))
    outs = []
    for o in outputs:
        carrying = [d for d in deliveries if _carries(d, o)]
        outs.append(OutputOut(
            id=o.id, kind=o.kind, sop_instance_uid=o.sop_instance_uid, series_uid=o.series_uid,
            revision=o.revision, superseded=o.superseded, created_at=aware(o.created_at),
            deliveries=[d.id for d in carrying],
            destinations=sorted({d.destination for d in carrying if d.status == DeliveryStatus.DONE}),
        ))
    model = None
    if result is not None:
        model = ModelOut(name=result.model_name, version=result.model_version, ehr_used=result.ehr_used,
                         seconds=result.seconds, params=result.params or {}, roi=result.roi or {})
    timings = {k: float(v) for k, v in (study.timings or {}).items() if isinstance(v, int | float)}
    base = _summary(study, result, n_instances)
    return StudyDetail(
        **base.model_dump(), ehr=ehr, ehr_fields=ehr_fields, outputs=outs,
        deliveries=[_delivery_out(d) for d in deliveries], timings=timings, attempts=study.attempts,
        model=model, completed_at=aware(study.completed_at), finished_at=aware(study.finished_at),
        created_at=aware(study.created_at),
    )


def evaluated_instance(session: Session, study: Study, result: InferenceResult | None) -> Instance | None:
    """The image the model evaluated, else the first frontal (or any) instance of the study."""
    if result is not None:
        inst = session.get(Instance, result.instance_id)
        if inst is not None:
            return inst
    return session.scalar(select(Instance).where(Instance.study_id == study.id)
                          .order_by(Instance.frontal.desc(), Instance.id).limit(1))


RERUNNABLE_FROM = set(StudyStatus) - {StudyStatus.RECEIVING}


def rerun_study(session: Session, study_uid: str, actor: str = "web") -> Study:
    """Set the study back to ``queued`` with attempts reset; the sweeper picks it up."""
    study = get_study(session, study_uid)
    if study.status not in RERUNNABLE_FROM:
        raise Conflict(f"study is {study.status.value}: wait until it is complete")
    previous = study.status.value
    study.status = StudyStatus.QUEUED
    study.attempts = 0
    study.error = None
    study.claimed_by = None
    study.claimed_at = None
    study.finished_at = None
    session.add(AuditEvent(kind="rerun_requested", study_id=study.id,
                           detail={"study_uid": study.study_uid, "from": previous, "by": actor,
                                   "revision": study.revision}))
    session.flush()
    return study


RETRYABLE = {DeliveryStatus.DEAD, DeliveryStatus.PENDING}


def retry_delivery(session: Session, delivery_id: int, actor: str = "web") -> Delivery:
    """A dead or pending delivery becomes pending and due now (a dead one gets its attempts back)."""
    delivery = session.get(Delivery, delivery_id)
    if delivery is None:
        raise NotFound(f"no delivery {delivery_id}")
    if delivery.status not in RETRYABLE:
        raise Conflict(f"delivery is {delivery.status.value}: only dead or pending deliveries can be retried")
    previous = delivery.status.value
    if delivery.status == DeliveryStatus.DEAD:
        delivery.attempts = 0
    delivery.status = DeliveryStatus.PENDING
    delivery.next_attempt_at = datetime.now(UTC)
    session.add(AuditEvent(kind="delivery_retry_requested", study_id=delivery.study_id,
                           detail={"delivery_id": delivery.id, "from": previous, "by": actor,
                                   "destination": delivery.destination}))
    session.flush()
    return delivery
