"""Group commit: one writer thread commits the rows of concurrently received instances together.

Every C-STORE handler thread has already written and fsynced its temp file; it hands the job to
the committer and waits. The writer takes everything waiting (up to ``max_batch``) and calls the
batch writer once inside one transaction, then commits once, so N concurrent associations pay for
one database fsync (and, in ingest, one folder fsync) instead of N. Success is still answered only
after the commit that holds the instance's row.

The batch writer works with SQLAlchemy Core on a plain connection (no ORM session on this path)
and gets every waiting job at once: ingest looks the SOP Instance UIDs up with one query, moves
the new files into place, upserts each study once and inserts the instance rows with one
multi-row statement. A batch that fails is retried job by job, so one bad job fails alone.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from diff3m.db.session import get_engine

log = logging.getLogger(__name__)

# Does the work of the jobs on the connection (inside its transaction, no commit) and returns
# one result per job, in order.
BatchWriter = Callable[[Connection, list[Any]], list[Any]]


@dataclass
class _Pending:
    job: Any
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    finished: bool = False
    error: BaseException | None = None


class GroupCommitter:
    """Batches the writes of one process into shared transactions (one committer per database URL)."""

    def __init__(self, db_url: str, write_batch: BatchWriter, max_batch: int = 64) -> None:
        self._engine = get_engine(db_url)
        self._write_batch = write_batch
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Pending] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="diff3m-group-commit", daemon=True)
        self._thread.start()

    def commit(self, job: Any) -> Any:
        """Write and commit one job; blocks until committed; returns its result or raises its error."""
        pending = _Pending(job)
        self._queue.put(pending)
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.result

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
                for p in batch:
                    if not p.finished and p.error is None:
                        p.error = err
            finally:
                for p in batch:
                    p.done.set()

    def _commit_batch(self, batch: list[_Pending]) -> None:
        try:
            with self._engine.begin() as conn:  # commits on success, rolls back on error
                results = self._write_batch(conn, [p.job for p in batch])
            for p, result in zip(batch, results, strict=True):
                p.result, p.finished = result, True
            return
        except (SQLAlchemyError, OSError) as err:
            if len(batch) == 1:
                batch[0].error = err
                return
            if not isinstance(err, IntegrityError):
                log.warning("batched commit of %d failed (%s); committing one by one", len(batch),
                            type(err).__name__)
        for p in batch:  # one of them conflicted (e.g. another process stored it): isolate it
            self._commit_batch([p])


_LOCK = threading.Lock()
_COMMITTERS: dict[str, GroupCommitter] = {}


def committer_for(db_url: str, write_batch: BatchWriter) -> GroupCommitter:
    """The process's committer for ``db_url``, started on first use."""
    with _LOCK:
        if db_url not in _COMMITTERS:
            _COMMITTERS[db_url] = GroupCommitter(db_url, write_batch)
        return _COMMITTERS[db_url]
