"""CLI: ``diff3m serve`` (everything in one process) and ``diff3m worker`` (scale-out)."""

from __future__ import annotations

from typing import Annotated

import typer

from diff3m.cli_common import ConfigOption, config_errors_exit, settings_or_exit


def register(app: typer.Typer) -> None:
    """Add the pipeline's commands to the ``diff3m`` CLI."""

    @app.command()
    def serve(
        config: ConfigOption = None,
        concurrency: Annotated[int, typer.Option(help="worker threads")] = 2,
    ) -> None:
        """DICOM listener + worker + web + sweeper in one command (SQLite, local durable queue)."""
        from diff3m.logging_setup import configure_logging
        from diff3m.pipeline.serve import serve as run

        settings = settings_or_exit(config)
        configure_logging()
        with config_errors_exit():  # e.g. [model] settings the checkpoint cannot score with
            run(settings, concurrency=concurrency)

    @app.command()
    def worker(
        config: ConfigOption = None,
        queues: Annotated[str, typer.Option(help="comma-separated: default,gpu")] = "default,gpu",
        concurrency: Annotated[int, typer.Option(help="worker threads (one GPU worker per GPU)")] = 1,
    ) -> None:
        """A pipeline worker for scale-out (Redis + PostgreSQL); loads the model once per process."""
        from diff3m.logging_setup import configure_logging
        from diff3m.pipeline.worker import run_worker

        settings = settings_or_exit(config)
        configure_logging()
        with config_errors_exit():
            run_worker(settings, queues=[q.strip() for q in queues.split(",") if q.strip()],
                       concurrency=concurrency)
