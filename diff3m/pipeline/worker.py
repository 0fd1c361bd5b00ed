"""Run a Celery worker in this process: the model loads once, the pool runs stages."""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery import signals

from diff3m.config import Settings
from diff3m.pipeline.celery_app import DEFAULT_QUEUE, GPU_QUEUE, configure

log = logging.getLogger(__name__)


def run_worker(settings: Settings, queues: list[str] | None = None, concurrency: int = 2,
               on_shutdown: Callable[[], None] | None = None, preload_model: bool = True,
               recover: bool = True) -> None:
    """Consume ``queues`` until SIGTERM/SIGINT; in-flight tasks finish first (warm shutdown)."""
    from diff3m.db.migrate import upgrade
    from diff3m.web.readiness import mark_model_loaded, mark_model_unloaded

    app = configure(settings)
    upgrade(settings.database.url)
    serves_model = preload_model and (queues is None or GPU_QUEUE in queues)
    if serves_model:
        from diff3m.pipeline.model_cache import scorer_for

        scorer = scorer_for(settings)
        mark_model_loaded(settings.database.url, scorer.name, scorer.version, str(scorer.device))
        log.info("model loaded: %s %s (%s)", scorer.name, scorer.version, scorer.profile_name)

    def _stop(**_: object) -> None:
        if on_shutdown is not None:
            on_shutdown()
        if serves_model:
            mark_model_unloaded(settings.database.url)

    signals.worker_shutting_down.connect(_stop, weak=False)
    if recover:  # `serve` runs its own sweeper, whose startup does the same
        _recover(settings)

    worker = app.Worker(
        queues=queues or [DEFAULT_QUEUE, GPU_QUEUE],
        pool="threads",
        concurrency=concurrency,
        loglevel="INFO",
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        optimization="fair",
    )
    worker.start()


def _recover(settings: Settings) -> None:
    """After a crash (kill -9, OOM) of a worker on this host: free its claims, enqueue unfinished work."""
    from diff3m.pipeline.sweeper import Sweeper

    try:
        Sweeper(settings).startup()
    except Exception:  # the scp's sweeper re-enqueues later; never keep the worker from starting
        log.exception("startup recovery failed")
