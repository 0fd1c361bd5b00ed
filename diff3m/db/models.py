"""SQLAlchemy 2 tables: the source of truth for every study's state."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

UID = String(64)


def utcnow() -> datetime:
    """Timezone-aware now, the one clock every table uses."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base with a naming convention so Alembic names constraints stably."""

    type_annotation_map = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


Base.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class StudyStatus(enum.StrEnum):
    """Where a study is in the pipeline."""

    RECEIVING = "receiving"  # instances arriving, not yet quiet
    QUEUED = "queued"  # complete, waiting for the pipeline
    FETCHING_EHR = "fetching_ehr"
    INFERRING = "inferring"
    BUILDING = "building"
    DELIVERING = "delivering"
    DONE = "done"
    SKIPPED = "skipped"  # nothing to evaluate (no frontal image)
    FAILED = "failed"


class Priority(enum.StrEnum):
    """Worklist priority, FHIR ServiceRequest.priority values."""

    ROUTINE = "routine"
    URGENT = "urgent"
    ASAP = "asap"
    STAT = "stat"


PRIORITY_RANK = {Priority.ROUTINE: 0, Priority.URGENT: 1, Priority.ASAP: 2, Priority.STAT: 3}


class DeliveryStatus(enum.StrEnum):
    """State of one outbox entry."""

    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    DONE = "done"
    DEAD = "dead"  # gave up after max attempts; visible, retryable by hand


class DeliveryKind(enum.StrEnum):
    """What an outbox entry sends."""

    DICOM = "dicom"  # C-STORE of instances or outputs to a destination
    FHIR_OBSERVATION = "fhir_observation"
    FHIR_TRIAGE = "fhir_triage"


def _enum(cls: type[enum.Enum]) -> Enum:
    return Enum(cls, native_enum=False, length=24, values_callable=lambda e: [m.value for m in e])


class Study(Base):
    """One imaging study, keyed by StudyInstanceUID."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    issuer_of_patient_id: Mapped[str | None] = mapped_column(String(64))
    accession_number: Mapped[str | None] = mapped_column(String(16), index=True)
    study_date: Mapped[str | None] = mapped_column(String(8))
    modality: Mapped[str | None] = mapped_column(String(16))
    calling_aet: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[StudyStatus] = mapped_column(
        _enum(StudyStatus), default=StudyStatus.RECEIVING, index=True
    )
    revision: Mapped[int] = mapped_column(Integer, default=0, doc="bumped by a late instance; outputs follow")
    priority: Mapped[Priority] = mapped_column(_enum(Priority), default=Priority.ROUTINE, index=True)
    score: Mapped[float | None] = mapped_column(Float)
    abnormal: Mapped[bool | None] = mapped_column(Boolean)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0, doc="pipeline attempts at this revision")
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, doc="stage -> seconds")
    claimed_by: Mapped[str | None] = mapped_column(String(128), doc="worker holding the current stage")
    claimed_at: Mapped[datetime | None] = mapped_column()
    last_instance_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    instances: Mapped[list[Instance]] = relationship(back_populates="study", order_by="Instance.id")


class Instance(Base):
    """One received SOP instance, stored as received."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    series_uid: Mapped[str] = mapped_column(UID)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(String(512), doc="relative to node.storage_dir")
    size: Mapped[int] = mapped_column(Integer)
    view_position: Mapped[str | None] = mapped_column(String(16))
    frontal: Mapped[bool] = mapped_column(Boolean, default=False)
    calling_aet: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)

    study: Mapped[Study] = relationship(back_populates="instances")


class EhrSnapshot(Base):
    """The EHR values used for one evaluation, with where each came from."""

    __tablename__ = "ehr_snapshots"
    __table_args__ = (UniqueConstraint("study_id", "revision"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    revision: Mapped[int] = mapped_column(Integer, default=0)
    available: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str | None] = mapped_column(Text, doc="why the EHR is unavailable or partial")
    values: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, doc="field -> value or null")
    sources: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, doc="field -> FHIR refs / DICOM tag")
    fetched_at: Mapped[datetime] = mapped_column(default=utcnow)


class InferenceResult(Base):
    """The model's output for one study revision."""

    __tablename__ = "inference_results"
    __table_args__ = (UniqueConstraint("study_id", "revision"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    revision: Mapped[int] = mapped_column(Integer, default=0)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"), doc="the image evaluated")
    score: Mapped[float] = mapped_column(Float)
    abnormal: Mapped[bool] = mapped_column(Boolean)
    threshold: Mapped[float] = mapped_column(Float)
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(64))
    ehr_used: Mapped[bool] = mapped_column(Boolean)
    map_path: Mapped[str | None] = mapped_column(String(512), doc="anomaly map (.npy), relative to storage")
    map_data: Mapped[bytes | None] = mapped_column(
        LargeBinary, deferred=True, doc="anomaly map at model resolution, float16 .npy bytes"
    )
    roi: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, doc="most anomalous box, source pixels")
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, doc="steps, noise level, device, ...")
    seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class OutputObject(Base):
    """A DICOM object we produced (SR, heatmap SC) for a study revision."""

    __tablename__ = "output_objects"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    revision: Mapped[int] = mapped_column(Integer, default=0)
    kind: Mapped[str] = mapped_column(String(16), doc="sr | sc")
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    series_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(String(512), doc="relative to node.storage_dir")
    data: Mapped[bytes | None] = mapped_column(
        LargeBinary, deferred=True, doc="the object itself, so any worker can deliver it"
    )
    superseded: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Delivery(Base):
    """Outbox entry: one thing to send somewhere, retried until done or dead."""

    __tablename__ = "deliveries"
    __table_args__ = (Index("ix_deliveries_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    dedup_key: Mapped[str] = mapped_column(String(255), unique=True, doc="makes enqueueing idempotent")
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id"), index=True)
    kind: Mapped[DeliveryKind] = mapped_column(_enum(DeliveryKind))
    destination: Mapped[str] = mapped_column(String(64), doc="destination name or 'fhir'")
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, doc="ids of what to send")
    status: Mapped[DeliveryStatus] = mapped_column(_enum(DeliveryStatus), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=8)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column()


class AuditEvent(Base):
    """Append-only record of what the node did (no PHI beyond UIDs)."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(64))
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id"), index=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
