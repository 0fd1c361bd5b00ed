"""The sweeper: turns database state into queued work (quiet studies, lost tasks, due deliveries).

The queue only carries ids; after any restart (worker, broker, the whole node) the sweeper finds
what the database says is unfinished and enqueues it again. Stages are idempotent, so a task
enqueued twice does its work once.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from sqlalchemy import select

from diff3m.config import Settings
from diff3m.db.models import Delivery, DeliveryStatus, Study, StudyStatus, utcnow
from diff3m.db.session import session_scope
from diff3m.pipeline import state
from diff3m.pipeline.celery_app import configure

log = logging.getLogger(__name__)


class Sweeper:
    """Periodic pass over the database that enqueues unfinished work."""

    def __init__(self, settings: Settings, interval: float = 1.0, requeue_after: float | None = None) -> None:
        self.settings = settings
        self.interval = interval
        self.requeue_after = settings.queue.requeue_after_seconds if requeue_after is None else requeue_after
        self._sent: dict[tuple[str, int, int], float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        configure(settings)  # `diff3m scp` has no worker that would point the Celery app at the broker

    # -- one pass ---------------------------------------------------------------------------

    def startup(self) -> int:
        """After a restart: free claims of dead local processes and enqueue all unfinished work."""
        with session_scope(self.settings.database.url) as s:
            released = state.release_dead_claims(s)
            rows = state.stuck(s, timedelta(0))
        for sid, rev, status in rows:
            self._send(status, sid, rev, force=True)
        if rows or released:
            log.info("sweeper startup: %d unfinished studies re-enqueued, %d claims released",
                     len(rows), released)
        return len(rows)

    def sweep(self) -> None:
        """One pass: complete quiet studies, re-enqueue lost work, kick due deliveries."""
        from diff3m.node.assembly import complete_quiet_studies
        from diff3m.pipeline.tasks import deliver

        url = self.settings.database.url
        for sid in complete_quiet_studies(url, self.settings.node.study_quiet_seconds):
            with session_scope(url) as s:
                study = s.get(Study, sid)
                if study is not None and study.status == StudyStatus.QUEUED:
                    self._send(StudyStatus.QUEUED, sid, study.revision, force=True)
        with session_scope(url) as s:
            lost = state.stuck(s, timedelta(seconds=self.requeue_after))
            due = s.execute(
                select(Delivery.id, Delivery.attempts).where(
                    Delivery.status == DeliveryStatus.PENDING, Delivery.next_attempt_at <= utcnow()
                )
            ).all()
            for study in s.scalars(select(Study).where(Study.status == StudyStatus.DELIVERING)).all():
                state.settle_deliveries(s, study)
        for sid, rev, status in lost:
            self._send(status, sid, rev)
        for did, attempts in due:
            key = ("deliver", did, attempts)
            if self._fresh(key):
                deliver.delay(did)

    def _fresh(self, key: tuple[str, int, int]) -> bool:
        now = time.monotonic()
        last = self._sent.get(key)
        if last is not None and now - last < self.requeue_after:
            return False
        self._sent[key] = now
        if len(self._sent) > 100_000:
            self._sent = {k: v for k, v in self._sent.items() if now - v < self.requeue_after}
        return True

    def _send(self, status: StudyStatus, sid: int, rev: int, force: bool = False) -> None:
        from diff3m.pipeline import tasks

        key = (str(status), sid, rev)
        if not self._fresh(key) and not force:
            return
        self._sent[key] = time.monotonic()
        if status in (StudyStatus.QUEUED, StudyStatus.FETCHING_EHR):
            tasks.fetch_ehr.delay(sid, rev)
        elif status == StudyStatus.INFERRING:
            tasks.infer.delay(sid, rev)
        elif status == StudyStatus.BUILDING:
            tasks.build_outputs.delay(sid, rev)
        elif status == StudyStatus.DELIVERING:
            with session_scope(self.settings.database.url) as s:
                pending = s.scalars(select(Delivery.id).where(
                    Delivery.study_id == sid,
                    Delivery.status.in_((DeliveryStatus.PENDING, DeliveryStatus.IN_PROGRESS)))).all()
            for did in pending:
                tasks.deliver.delay(did)

    # -- background loop --------------------------------------------------------------------

    def run_forever(self) -> None:
        """Sweep every ``interval`` seconds until stopped; errors are logged, never fatal."""
        try:
            self.startup()
        except Exception:
            log.exception("sweeper startup failed; will retry in the loop")
        while not self._stop.wait(self.interval):
            try:
                self.sweep()
            except Exception:
                log.exception("sweep failed; retrying")

    def start(self) -> threading.Thread:
        """Run the loop in a daemon thread."""
        self._thread = threading.Thread(target=self.run_forever, name="diff3m-sweeper", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        """Ask the loop to end after the current pass."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
