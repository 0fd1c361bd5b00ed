"""Delivery outbox: durable, idempotent queue of things to send, retried with backoff, then dead-lettered.

Generic for every ``DeliveryKind``. Several workers may claim concurrently: on PostgreSQL rows are
claimed with ``FOR UPDATE SKIP LOCKED``; on every backend the claim itself is a conditional update,
so one entry is never handed to two workers.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from diff3m.config import DeliverySettings, Settings
from diff3m.db.models import Delivery, DeliveryKind, DeliveryStatus, utcnow
from diff3m.db.session import session_scope

log = logging.getLogger(__name__)

DEFAULT_LEASE_SECONDS = 600.0  # an IN_PROGRESS entry older than this is assumed abandoned


def enqueue(session: Session, kind: DeliveryKind, destination: str, payload: dict[str, Any],
            dedup_key: str, study_id: int | None = None, max_attempts: int = 8) -> Delivery:
    """Add a delivery unless one with ``dedup_key`` exists; returns the (new or existing) entry."""
    now = utcnow()
    values = dict(dedup_key=dedup_key, study_id=study_id, kind=kind.value, destination=destination,
                  payload=payload, status=DeliveryStatus.PENDING.value, attempts=0,
                  max_attempts=max_attempts, next_attempt_at=now, created_at=now, updated_at=now)
    table = Delivery.__table__  # type: Any
    if session.get_bind().dialect.name == "postgresql":
        session.execute(postgresql.insert(table).values(**values).on_conflict_do_nothing())
    else:
        session.execute(sqlite.insert(table).values(**values).on_conflict_do_nothing())
    session.flush()
    delivery = session.scalars(select(Delivery).where(Delivery.dedup_key == dedup_key)).one()
    return delivery


def claim_due(session: Session, now: datetime | None = None, limit: int = 10,
              kinds: Sequence[DeliveryKind] | None = None,
              lease_seconds: float = DEFAULT_LEASE_SECONDS) -> list[Delivery]:
    """Claim up to ``limit`` due entries (PENDING and due, or IN_PROGRESS past their lease).

    Claimed entries become IN_PROGRESS with ``attempts`` incremented; the caller must later call
    ``mark_done`` or ``mark_failed``. Commits the claim.
    """
    now = now or utcnow()
    stale = now - timedelta(seconds=lease_seconds)
    due = or_(
        (Delivery.status == DeliveryStatus.PENDING) & (Delivery.next_attempt_at <= now),
        (Delivery.status == DeliveryStatus.IN_PROGRESS) & (Delivery.updated_at <= stale),
    )
    query = select(Delivery.id, Delivery.status, Delivery.updated_at).where(due)
    if kinds:
        query = query.where(Delivery.kind.in_([k.value for k in kinds]))
    query = query.order_by(Delivery.next_attempt_at, Delivery.id).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    rows = session.execute(query).all()
    claimed: list[int] = []
    for row in rows:
        result = session.execute(
            update(Delivery).where(Delivery.id == row.id, Delivery.status == row.status,
                                   Delivery.updated_at == row.updated_at)
            .values(status=DeliveryStatus.IN_PROGRESS, attempts=Delivery.attempts + 1, updated_at=now)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            claimed.append(row.id)
    session.commit()
    if not claimed:
        return []
    return list(session.scalars(select(Delivery).where(Delivery.id.in_(claimed)).order_by(Delivery.id)))


def backoff_seconds(attempts: int, settings: DeliverySettings, rng: random.Random | None = None) -> float:
    """Delay before the next try after ``attempts`` failures: exponential, capped, with jitter.

    The delay is drawn uniformly from [d/2, d] where d = min(max, base * 2**(attempts-1)).
    """
    rng = rng or random.Random()
    d = min(settings.backoff_max_seconds, settings.backoff_seconds * 2 ** max(0, attempts - 1))
    return rng.uniform(d / 2, d)


def mark_done(session: Session, delivery_id: int, now: datetime | None = None) -> None:
    """Record a successful delivery (commits)."""
    now = now or utcnow()
    session.execute(update(Delivery).where(Delivery.id == delivery_id).values(
        status=DeliveryStatus.DONE, delivered_at=now, last_error=None, updated_at=now))
    session.commit()


def mark_failed(session: Session, delivery_id: int, error: str, settings: DeliverySettings,
                now: datetime | None = None, rng: random.Random | None = None,
                retryable: bool = True) -> DeliveryStatus:
    """Record a failed attempt: PENDING again after a backoff, or DEAD after max attempts (commits)."""
    now = now or utcnow()
    delivery = session.get(Delivery, delivery_id)
    if delivery is None:
        raise KeyError(delivery_id)
    if not retryable or delivery.attempts >= delivery.max_attempts:
        status, next_at = DeliveryStatus.DEAD, now
    else:
        status = DeliveryStatus.PENDING
        next_at = now + timedelta(seconds=backoff_seconds(delivery.attempts, settings, rng))
    delivery.status, delivery.next_attempt_at = status, next_at
    delivery.last_error, delivery.updated_at = error[:2000], now
    session.commit()
    log.info("delivery %d to %s failed (attempt %d/%d): %s -> %s", delivery_id, delivery.destination,
             delivery.attempts, delivery.max_attempts, error[:200], status.value)
    return status


def retry(session: Session, delivery_id: int, now: datetime | None = None) -> Delivery:
    """Put a DEAD (or PENDING) entry back in the queue, due now, with a fresh attempt count (commits)."""
    now = now or utcnow()
    delivery = session.get(Delivery, delivery_id)
    if delivery is None:
        raise KeyError(delivery_id)
    if delivery.status in (DeliveryStatus.DONE, DeliveryStatus.IN_PROGRESS):
        raise ValueError(f"delivery {delivery_id} is {delivery.status.value}, not retryable")
    delivery.status, delivery.attempts = DeliveryStatus.PENDING, 0
    delivery.next_attempt_at, delivery.updated_at = now, now
    session.commit()
    return delivery


def list_deliveries(session: Session, status: DeliveryStatus | None = None, kind: DeliveryKind | None = None,
                    study_id: int | None = None, limit: int = 100) -> list[Delivery]:
    """Outbox entries, newest first, optionally filtered."""
    query = select(Delivery)
    if status is not None:
        query = query.where(Delivery.status == status)
    if kind is not None:
        query = query.where(Delivery.kind == kind)
    if study_id is not None:
        query = query.where(Delivery.study_id == study_id)
    return list(session.scalars(query.order_by(Delivery.id.desc()).limit(limit)))


Sender = Callable[[Settings, Delivery], None]


def process_due(settings: Settings, senders: dict[DeliveryKind, Sender], db_url: str | None = None,
                limit: int = 10, now: datetime | None = None) -> list[tuple[int, DeliveryStatus]]:
    """Claim due entries of the kinds in ``senders``, send each, record the result; returns outcomes.

    A sender raises to fail the attempt; an exception with ``retryable = False`` dead-letters at once.
    """
    url = db_url or settings.database.url
    with session_scope(url) as session:
        claimed = claim_due(session, now=now, limit=limit, kinds=list(senders))
    results: list[tuple[int, DeliveryStatus]] = []
    for delivery in claimed:
        try:
            senders[delivery.kind](settings, delivery)
        except Exception as err:
            with session_scope(url) as session:
                status = mark_failed(session, delivery.id, f"{type(err).__name__}: {err}", settings.delivery,
                                     now=now, retryable=getattr(err, "retryable", True))
            results.append((delivery.id, status))
            continue
        with session_scope(url) as session:
            mark_done(session, delivery.id, now=now)
        results.append((delivery.id, DeliveryStatus.DONE))
    return results
