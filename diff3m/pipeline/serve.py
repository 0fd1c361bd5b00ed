"""``diff3m serve``: listener + worker + web + sweeper in one process, nothing external needed."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from diff3m.config import Settings

log = logging.getLogger(__name__)


@dataclass
class WebThread:
    """uvicorn serving the web app from a background thread."""

    settings: Settings
    server: Any = None
    thread: threading.Thread | None = None

    def start(self) -> None:
        """Start serving; returns once the socket is bound."""
        import uvicorn

        from diff3m.web.app import create_app

        config = uvicorn.Config(create_app(self.settings), host=self.settings.web.host,
                                port=self.settings.web.port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="diff3m-web", daemon=True)
        self.thread.start()
        while not self.server.started and self.thread.is_alive():
            threading.Event().wait(0.05)
        if not self.server.started:
            raise RuntimeError(f"web server could not bind {self.settings.web.host}:{self.settings.web.port}")

    def stop(self) -> None:
        """Ask uvicorn to exit and wait briefly."""
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=10)


@dataclass
class Node:
    """The parts ``serve`` runs around the Celery worker in the main thread."""

    settings: Settings
    parts: list[Any] = field(default_factory=list)
    _stopped: bool = False

    def start_side_parts(self, web: bool = True) -> None:
        """Bind the DICOM listener, the web app, and start the sweeper."""
        from diff3m.node.scp import start_listener
        from diff3m.pipeline.delivery import DeliveryLoop
        from diff3m.pipeline.sweeper import Sweeper

        listener = start_listener(self.settings)
        self.parts.append(listener)
        if web:
            web_thread = WebThread(self.settings)
            web_thread.start()
            self.parts.append(web_thread)
        sweeper = Sweeper(self.settings)
        sweeper.start()
        self.parts.append(sweeper)
        deliveries = DeliveryLoop(self.settings)
        deliveries.start()
        self.parts.append(deliveries)

    def stop(self) -> None:
        """Stop accepting first (listener, web), then the sweeper; in-flight tasks finish in Celery."""
        if self._stopped:
            return
        self._stopped = True
        for part in self.parts:
            try:
                (part.shutdown if hasattr(part, "shutdown") else part.stop)()
            except Exception:  # keep stopping the others
                log.exception("error while stopping %s", type(part).__name__)


def serve(settings: Settings, concurrency: int = 2) -> None:
    """Run the whole node until SIGTERM/SIGINT: migrate, listen, serve the web, sweep, work."""
    from diff3m.db.migrate import upgrade
    from diff3m.pipeline.worker import run_worker

    upgrade(settings.database.url)
    node = Node(settings)
    node.start_side_parts()
    host = "127.0.0.1" if settings.web.host in ("0.0.0.0", "::") else settings.web.host
    banner = (
        f"Diff3M node up: DICOM {settings.node.ae_title}@{settings.node.host}:{settings.node.port}; "
        f"worklist http://{host}:{settings.web.port}/ ; push the bundled samples with "
        f"`diff3m send --samples --port {settings.node.port} --aet {settings.node.ae_title}`"
    )
    print(banner, flush=True)
    log.info(banner)
    try:
        run_worker(settings, concurrency=concurrency, on_shutdown=node.stop, recover=False)
    finally:
        node.stop()
