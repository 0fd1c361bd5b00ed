"""The model-readiness flag: workers record "model loaded" as an AuditEvent row that /readyz reads.

A worker (or ``diff3m serve``) calls :func:`mark_model_loaded` once its model is in memory and
:func:`mark_model_unloaded` when it stops. The model counts as ready when at least one worker's
latest such event is ``model_loaded``, or when this very process holds a loaded model.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from diff3m.db.models import AuditEvent
from diff3m.db.session import session_scope

LOADED = "model_loaded"
UNLOADED = "model_unloaded"
RECENT = 500  # how many readiness events to look back over


def worker_name() -> str:
    """This process as a worker name: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def mark_model_loaded(db_url: str, model_name: str, model_version: str, device: str,
                      worker: str | None = None) -> None:
    """Record that ``worker`` (default: this process) has the model in memory."""
    with session_scope(db_url) as s:
        s.add(AuditEvent(kind=LOADED, detail={"worker": worker or worker_name(), "model": model_name,
                                              "version": model_version, "device": device}))


def mark_model_unloaded(db_url: str, worker: str | None = None) -> None:
    """Record that ``worker`` (default: this process) stopped serving the model."""
    with session_scope(db_url) as s:
        s.add(AuditEvent(kind=UNLOADED, detail={"worker": worker or worker_name()}))


@dataclass(frozen=True)
class ModelReadiness:
    """Which workers currently report a loaded model."""

    ready: bool
    workers: list[str]
    detail: str


def _in_process_loaded() -> bool:
    try:
        from diff3m.pipeline.model_cache import loaded
    except ImportError:
        return False
    return loaded()


def model_readiness(session: Session) -> ModelReadiness:
    """Ready when this process or at least one worker (by its latest event) has the model loaded."""
    rows = session.scalars(select(AuditEvent).where(AuditEvent.kind.in_((LOADED, UNLOADED)))
                          .order_by(AuditEvent.id.desc()).limit(RECENT)).all()
    latest: dict[str, str] = {}
    versions: dict[str, str] = {}
    for ev in rows:
        worker = str((ev.detail or {}).get("worker", "?"))
        if worker not in latest:
            latest[worker] = ev.kind
            versions[worker] = str((ev.detail or {}).get("version", ""))
    workers = sorted(w for w, kind in latest.items() if kind == LOADED)
    if _in_process_loaded():
        return ModelReadiness(True, [*workers, "this process"], "model loaded in this process")
    if workers:
        return ModelReadiness(True, workers, f"{len(workers)} worker(s) report the model loaded")
    return ModelReadiness(False, [], "no worker reports a loaded model (start `diff3m worker`)")
