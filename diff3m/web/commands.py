"""``diff3m web``: serve the worklist, API, /metrics and DICOMweb with uvicorn."""

from __future__ import annotations

from typing import Annotated

import typer

from diff3m.cli_common import ConfigOption, config_errors_exit, settings_or_exit


def register(app: typer.Typer) -> None:
    """Add the ``web`` command to the ``diff3m`` CLI."""

    @app.command("web")
    def web(
        config: ConfigOption = None,
        host: Annotated[str | None, typer.Option(help="override [web] host")] = None,
        port: Annotated[int | None, typer.Option(help="override [web] port")] = None,
        log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
    ) -> None:
        """Run the worklist web UI and JSON API (token required when bound off loopback)."""
        import uvicorn

        from diff3m.logging_setup import configure_logging
        from diff3m.web.app import create_app

        settings = settings_or_exit(config)
        if host is not None:
            settings.web.host = host
        if port is not None:
            settings.web.port = port
        configure_logging(log_level.upper())
        with config_errors_exit():
            application = create_app(settings)
        typer.echo(f"worklist at http://{settings.web.host}:{settings.web.port}/", err=True)
        uvicorn.run(application, host=settings.web.host, port=settings.web.port, log_config=None,
                    access_log=False, log_level=log_level.lower(), proxy_headers=True)
