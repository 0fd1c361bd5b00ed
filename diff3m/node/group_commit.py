"""Group commit: one writer thread commits the rows of concurrently received instances together.

Every C-STORE handler thread has already fsynced its file; it hands the row to the committer and
waits. The writer takes everything waiting (up to ``max_batch``), writes the rows in one
transaction and commits once, so N concurrent associations pay for one database fsync instead of
N. Success is still answered only after the commit that holds the instance's row.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from diff3m.db.session import session_factory

log = logging.getLogger(__name__)

RowWriter = Callable[[Session, Any, str, int, "str | None", datetime], tuple[int, int, bool]]


@dataclass
class _Job:
    info: Any  # ingest.InstanceInfo
    relpath: str
    size: int
    calling_aet: str | None
    now: datetime
    done: threading.Event = field(default_factory=threading.Event)
    result: tuple[int, int, bool] | None = None
    error: BaseException | None = None


class GroupCommitter:
    """Batches row writes of one process into shared transactions (one per database URL)."""

    def __init__(self, db_url: str, write_rows: RowWriter, max_batch: int = 64) -> None:
        self._factory = session_factory(db_url)
        self._write_rows = write_rows
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="diff3m-group-commit", daemon=True)
        self._thread.start()

    def commit(self, info: Any, relpath: str, size: int, calling_aet: str | None,
               now: datetime) -> tuple[int, int, bool]:
        """Write and commit one instance's rows; blocks until committed; raises what the commit raised."""
        job = _Job(info, relpath, size, calling_aet, now)
        self._queue.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._commit_batch(batch)
            except BaseException as err:  # never leave a handler waiting
                log.exception("group commit failed")
                for job in batch:
                    if job.result is None and job.error is None:
                        job.error = err
            finally:
                for job in batch:
                    job.done.set()

    def _commit_batch(self, batch: list[_Job]) -> None:
        session = self._factory()
        try:
            results = [self._write_rows(session, j.info, j.relpath, j.size, j.calling_aet, j.now)
                       for j in batch]
            session.commit()
            for job, result in zip(batch, results, strict=True):
                job.result = result
            return
        except SQLAlchemyError as err:
            session.rollback()
            if len(batch) == 1:
                batch[0].error = err
                return
            if not isinstance(err, IntegrityError):
                log.warning("batched commit of %d failed (%s); committing one by one", len(batch),
                            type(err).__name__)
        finally:
            session.close()
        for job in batch:  # one of them conflicted (e.g. another process stored it): isolate it
            self._commit_batch([job])


_LOCK = threading.Lock()
_COMMITTERS: dict[str, GroupCommitter] = {}


def committer_for(db_url: str, write_rows: RowWriter) -> GroupCommitter:
    """The process's committer for ``db_url``, started on first use."""
    with _LOCK:
        if db_url not in _COMMITTERS:
            _COMMITTERS[db_url] = GroupCommitter(db_url, write_rows)
        return _COMMITTERS[db_url]
