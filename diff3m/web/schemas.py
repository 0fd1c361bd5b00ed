"""Response models of the JSON API (also what the pages render)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from diff3m.db.models import DeliveryKind, DeliveryStatus, Priority, StudyStatus


class DeliveryOut(BaseModel):
    """One outbox entry: where something went, how often we tried, what went wrong."""

    id: int
    kind: DeliveryKind
    destination: str
    status: DeliveryStatus
    attempts: int
    max_attempts: int
    last_error: str | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    payload: dict[str, Any]


class OutputOut(BaseModel):
    """A DICOM object we produced (SR or heatmap SC) and the deliveries that carry it."""

    id: int
    kind: str
    sop_instance_uid: str
    series_uid: str
    revision: int
    superseded: bool
    created_at: datetime | None
    deliveries: list[int] = Field(description="ids of the deliveries whose payload names this object")
    destinations: list[str] = Field(description="where it went (done deliveries)")


class EhrField(BaseModel):
    """One EHR field as used: its value (null when missing) and the resources it came from."""

    name: str
    value: float | str | None
    sources: list[str]


class ModelOut(BaseModel):
    """What evaluated the study."""

    name: str
    version: str
    ehr_used: bool
    seconds: float
    params: dict[str, Any]
    roi: dict[str, Any]


class StudySummary(BaseModel):
    """A worklist row."""

    model_config = ConfigDict(protected_namespaces=())

    study_uid: str
    patient_id: str | None
    accession_number: str | None
    study_date: str | None
    modality: str | None
    status: StudyStatus
    priority: Priority
    score: float | None
    abnormal: bool | None
    threshold: float | None
    revision: int
    instances: int
    has_heatmap: bool
    error: str | None
    updated_at: datetime | None


class StudyList(BaseModel):
    """One page of the worklist."""

    total: int
    limit: int
    offset: int
    items: list[StudySummary]


class StudyDetail(StudySummary):
    """One study in full.

    ``ehr`` maps every registry field name to the value used (null when missing) and also has
    ``available`` (false when the EHR could not be fetched), ``reason`` (why), ``values`` (the
    same field -> value map), ``sources`` (field -> FHIR references / DICOM keywords) and
    ``fetched_at``.
    """

    ehr: dict[str, Any]
    ehr_fields: list[EhrField]
    outputs: list[OutputOut]
    deliveries: list[DeliveryOut]
    timings: dict[str, float]
    attempts: int
    model: ModelOut | None
    completed_at: datetime | None
    finished_at: datetime | None
    created_at: datetime | None


class ActionResult(BaseModel):
    """The outcome of a rerun or retry request."""

    ok: bool
    id: str
    status: str
    detail: str
