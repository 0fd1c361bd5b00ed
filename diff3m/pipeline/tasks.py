"""Celery tasks: thin, idempotent wrappers that take ids, run one stage and enqueue the next."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from celery import Task

from diff3m.db.session import session_scope
from diff3m.pipeline import stages, state
from diff3m.pipeline.celery_app import app, current_settings

log = logging.getLogger(__name__)

RETRY = {"autoretry_for": (Exception,), "retry_backoff": 5, "retry_backoff_max": 300,
         "retry_jitter": True, "max_retries": 10}


def enqueue_next(nxt: stages.Next | None) -> None:
    """Send the task for the stage a finished stage asked for."""
    if nxt is None:
        return
    if nxt.stage == "infer":
        infer.delay(nxt.study_id, nxt.revision)
    elif nxt.stage == "build":
        build_outputs.delay(nxt.study_id, nxt.revision)
    for delivery_id in nxt.delivery_ids:
        deliver.delay(delivery_id)


@contextmanager
def _claim_released_on_error(task: Task, study_id: int) -> Iterator[None]:
    """A stage that raises after claiming (database or broker gone mid-stage) must not keep its claim
    for the whole lease: drop it on the way out, and again on a retry (the first drop may have failed)."""
    url = current_settings().database.url
    if task.request.retries:
        with session_scope(url) as s:
            state.release_own_claim(s, study_id)
    try:
        yield
    except Exception:
        try:
            with session_scope(url) as s:
                state.release_own_claim(s, study_id)
        except Exception:  # still unreachable: the retry drops it
            log.warning("could not release the claim on study id %d yet", study_id)
        raise


@app.task(bind=True, name="diff3m.pipeline.tasks.fetch_ehr", **RETRY)
def fetch_ehr(self: Task, study_id: int, revision: int) -> None:
    """Stage 1: the study's EHR snapshot (and forwarding of originals)."""
    with _claim_released_on_error(self, study_id):
        enqueue_next(stages.fetch_ehr(current_settings(), study_id, revision))


@app.task(bind=True, name="diff3m.pipeline.tasks.infer", **RETRY)
def infer(self: Task, study_id: int, revision: int) -> None:
    """Stage 2 (queue "gpu"): score this study and others waiting, in one batch."""
    with _claim_released_on_error(self, study_id):
        for nxt in stages.infer(current_settings(), study_id, revision):
            enqueue_next(nxt)


@app.task(bind=True, name="diff3m.pipeline.tasks.build_outputs", **RETRY)
def build_outputs(self: Task, study_id: int, revision: int) -> None:
    """Stage 3: SR + heatmap SC, then the deliveries they need."""
    with _claim_released_on_error(self, study_id):
        enqueue_next(stages.build_outputs(current_settings(), study_id, revision))


@app.task(bind=True, name="diff3m.pipeline.tasks.deliver", max_retries=0)
def deliver(self: Task, delivery_id: int) -> None:
    """Stage 4: one outbox entry (its own backoff lives in the outbox, not in Celery)."""
    from diff3m.pipeline.delivery import deliver_one

    deliver_one(current_settings(), delivery_id)
