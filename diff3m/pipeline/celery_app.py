"""The Celery app: broker from ``[queue] broker_url``; the database, not the queue, holds the truth."""

from __future__ import annotations

from pathlib import Path

from celery import Celery
from kombu import Queue

from diff3m.config import Settings

GPU_QUEUE = "gpu"
DEFAULT_QUEUE = "default"

_SETTINGS: Settings | None = None

app = Celery("diff3m", include=["diff3m.pipeline.tasks"])


def _ensure_sqlite_dir(url: str) -> None:
    if url.startswith("sqla+sqlite:///"):
        path = url.removeprefix("sqla+sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)


def configure(settings: Settings) -> Celery:
    """Point the app at ``settings`` (broker, queues, reliability options) and remember them."""
    global _SETTINGS
    _SETTINGS = settings
    _ensure_sqlite_dir(settings.queue.broker_url)
    app.conf.update(
        broker_url=settings.queue.broker_url,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=DEFAULT_QUEUE,
        task_queues=[Queue(DEFAULT_QUEUE), Queue(GPU_QUEUE)],
        task_routes={"diff3m.pipeline.tasks.infer": {"queue": GPU_QUEUE}},
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        broker_transport_options=(
            {"visibility_timeout": 3600} if settings.queue.broker_url.startswith("redis") else {}
        ),
    )
    return app


def current_settings() -> Settings:
    """The settings the app was configured with (workers configure it before starting)."""
    if _SETTINGS is None:
        from diff3m.config import load_settings

        return configure(load_settings()) and _SETTINGS  # type: ignore[return-value]
    return _SETTINGS
