"""Study assembly: a study is complete once no instance arrived for ``study_quiet_seconds``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import select, update

from diff3m.db.models import AuditEvent, Instance, Study, StudyStatus, utcnow
from diff3m.db.session import session_scope

log = logging.getLogger(__name__)


def complete_quiet_studies(db_url: str, quiet_seconds: float, now: datetime | None = None) -> list[int]:
    """Mark quiet RECEIVING studies QUEUED (a frontal image present) or SKIPPED; return the QUEUED ids.

    A study is quiet when its last instance arrived at least ``quiet_seconds`` before ``now``.
    Lateral-only studies are SKIPPED with an AuditEvent listing the images passed over. The status
    change is conditional on the study still being RECEIVING and quiet, so an instance arriving
    meanwhile (or another process doing the same) never loses an update.
    """
    now = now or utcnow()
    cutoff = now - timedelta(seconds=quiet_seconds)
    queued: list[int] = []
    with session_scope(db_url) as session:
        candidates = session.scalars(
            select(Study.id).where(Study.status == StudyStatus.RECEIVING, Study.last_instance_at <= cutoff)
            .order_by(Study.last_instance_at)
        ).all()
    for study_id in candidates:
        with session_scope(db_url) as session:
            rows = session.execute(
                select(Instance.sop_instance_uid, Instance.view_position, Instance.frontal)
                .where(Instance.study_id == study_id)
            ).all()
            frontal = [r for r in rows if r.frontal]
            target = StudyStatus.QUEUED if frontal else StudyStatus.SKIPPED
            changed = session.execute(
                update(Study).where(Study.id == study_id, Study.status == StudyStatus.RECEIVING,
                                    Study.last_instance_at <= cutoff)
                .values(status=target, completed_at=now,
                        error=None if frontal else "no frontal (AP/PA) image")
            ).rowcount  # type: ignore[attr-defined]
            if not changed:
                continue
            laterals = [{"sop_instance_uid": r.sop_instance_uid, "view_position": r.view_position}
                        for r in rows if not r.frontal]
            session.add(AuditEvent(
                kind="study_complete" if frontal else "study_skipped", study_id=study_id,
                detail={"status": target.value, "frontal": len(frontal), "skipped_laterals": laterals},
            ))
        if frontal:
            queued.append(study_id)
        log.info("study id %d complete: %s (%d frontal, %d lateral)", study_id, target.value, len(frontal),
                 len(rows) - len(frontal))
    return queued


class AssemblyLoop:
    """Background thread calling ``complete_quiet_studies`` every ``interval`` seconds."""

    def __init__(self, db_url: str, quiet_seconds: float, interval: float = 1.0,
                 on_complete: Callable[[list[int]], None] | None = None) -> None:
        self.db_url, self.quiet_seconds, self.interval = db_url, quiet_seconds, interval
        self.on_complete = on_complete
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="study-assembly", daemon=True)

    def start(self) -> AssemblyLoop:
        """Start the loop thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the loop to stop and wait for it."""
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                ids = complete_quiet_studies(self.db_url, self.quiet_seconds)
                if ids and self.on_complete is not None:
                    self.on_complete(ids)
            except Exception:  # keep assembling after a transient DB error
                log.exception("study assembly pass failed")
