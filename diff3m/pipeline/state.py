"""Study state in the database: stage transitions, claims (leases) and stage timings."""

from __future__ import annotations

import os
import socket
import threading
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from diff3m.db.models import AuditEvent, Delivery, DeliveryStatus, Study, StudyStatus, utcnow

# Statuses the pipeline still owes work for; the sweeper re-enqueues them after any restart.
UNFINISHED = (
    StudyStatus.QUEUED,
    StudyStatus.FETCHING_EHR,
    StudyStatus.INFERRING,
    StudyStatus.BUILDING,
    StudyStatus.DELIVERING,
)


def worker_id() -> str:
    """Who holds a claim: host, process and thread."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def current(session: Session, study_id: int, revision: int, *statuses: StudyStatus) -> Study | None:
    """The study when it is still at ``revision`` and in one of ``statuses``; None means stale work."""
    study = session.get(Study, study_id)
    if study is None or study.revision != revision or study.status not in statuses:
        return None
    return study


def claim(session: Session, study_id: int, revision: int, statuses: tuple[StudyStatus, ...],
          lease: timedelta) -> bool:
    """Atomically take a study for one stage; False when another worker holds a live claim."""
    now = utcnow()
    result = session.execute(
        update(Study)
        .where(
            Study.id == study_id,
            Study.revision == revision,
            Study.status.in_(statuses),
            or_(Study.claimed_by.is_(None), Study.claimed_at < now - lease),
        )
        .values(claimed_by=worker_id(), claimed_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def release_own_claim(session: Session, study_id: int) -> bool:
    """Drop a claim on the study held by this process (a stage of ours raised after claiming)."""
    prefix = worker_id().rsplit(":", 1)[0] + ":"
    result = session.execute(
        update(Study).where(Study.id == study_id, Study.claimed_by.startswith(prefix, autoescape=True))
        .values(claimed_by=None, claimed_at=None).execution_options(synchronize_session=False)
    )
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def advance(session: Session, study: Study, to: StudyStatus, stage: str | None = None,
            seconds: float | None = None) -> None:
    """Move a study to its next status, drop its claim and record the stage's duration."""
    study.status = to
    study.claimed_by = None
    study.claimed_at = None
    if stage is not None and seconds is not None:
        timings = dict(study.timings or {})
        timings[stage] = round(seconds, 3)
        study.timings = timings
    if to in (StudyStatus.DONE, StudyStatus.FAILED, StudyStatus.SKIPPED):
        study.finished_at = utcnow()
        if study.completed_at is not None:
            timings = dict(study.timings or {})
            timings["total"] = round((study.finished_at - _aware(study.completed_at)).total_seconds(), 3)
            study.timings = timings


def _aware(dt: datetime) -> datetime:
    from datetime import UTC

    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def fail(session: Session, study: Study, error: str) -> None:
    """Mark a study failed with a reason (visible in the API and the worklist)."""
    study.error = error[:2000]
    advance(session, study, StudyStatus.FAILED)
    audit(session, "study_failed", study.id, error=error[:500])


def audit(session: Session, kind: str, study_id: int | None, **detail: object) -> None:
    """Append an audit event (UIDs and ids only, never PHI)."""
    session.add(AuditEvent(kind=kind, study_id=study_id, detail=detail))


def settle_deliveries(session: Session, study: Study) -> None:
    """Set a delivering study DONE when all its deliveries are done, FAILED when one is dead."""
    if study.status != StudyStatus.DELIVERING:
        return
    statuses = set(
        session.scalars(select(Delivery.status).where(Delivery.study_id == study.id)).all()
    )
    if DeliveryStatus.DEAD in statuses:
        dead = session.scalars(
            select(Delivery).where(Delivery.study_id == study.id, Delivery.status == DeliveryStatus.DEAD)
        ).all()
        study.error = "; ".join(f"delivery to {d.destination} dead: {d.last_error}" for d in dead)[:2000]
        advance(session, study, StudyStatus.FAILED)
    elif statuses <= {DeliveryStatus.DONE}:
        study.error = None
        advance(session, study, StudyStatus.DONE)


def stuck(session: Session, older_than: timedelta) -> list[tuple[int, int, StudyStatus]]:
    """Unfinished studies untouched for ``older_than``: (id, revision, status) to re-enqueue."""
    cutoff = utcnow() - older_than
    rows = session.execute(
        select(Study.id, Study.revision, Study.status).where(
            Study.status.in_(UNFINISHED), Study.updated_at < cutoff
        )
    ).all()
    return [(r[0], r[1], r[2]) for r in rows]


def release_dead_claims(session: Session) -> int:
    """Drop claims held by processes of this host that no longer exist (after a crash or kill -9)."""
    host = socket.gethostname()
    released = 0
    for study in session.scalars(select(Study).where(Study.claimed_by.is_not(None))).all():
        owner_host, _, rest = (study.claimed_by or "").partition(":")
        pid = rest.split(":", 1)[0]
        if owner_host == host and pid.isdigit() and not _alive(int(pid)):
            study.claimed_by = None
            study.claimed_at = None
            released += 1
    session.commit()
    return released


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
