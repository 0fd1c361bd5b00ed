"""CLI of the DICOM node: ``diff3m scp``, ``diff3m send``, ``diff3m deliveries list|retry``."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from diff3m.cli_common import ConfigOption, settings_or_exit

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"

deliveries_app = typer.Typer(help="Inspect and retry the delivery outbox.", no_args_is_help=True)


def _expand(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
        else:
            out.append(p)
    return out


def _start_assembly(settings: Any) -> Any:
    """The pipeline's sweeper when installed (assembly + enqueue), else the plain assembly loop."""
    try:
        from diff3m.pipeline.sweeper import Sweeper
    except ModuleNotFoundError:
        from diff3m.node.assembly import AssemblyLoop

        return AssemblyLoop(settings.database.url, settings.node.study_quiet_seconds).start()
    sweeper = Sweeper(settings)
    sweeper.start()
    return sweeper


def _listener_process(settings: Any, ready: Any) -> None:
    """Body of an extra listener process (``diff3m scp --processes N``)."""
    from diff3m.node.scp import start_listener

    listener = start_listener(settings, shared_port=True)
    ready.set()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    done.wait()
    listener.stop()


def register(app: typer.Typer) -> None:
    """Add the node's commands to the ``diff3m`` CLI."""
    app.add_typer(deliveries_app, name="deliveries")

    @app.command()
    def scp(
        config: ConfigOption = None,
        assembly: Annotated[bool, typer.Option(help="also complete quiet studies and enqueue them")] = True,
        processes: Annotated[int, typer.Option(
            min=1, max=64,
            help="listener processes sharing the port (SO_REUSEPORT); 1 was fastest on 2 cores")] = 1,
    ) -> None:
        """Run the DICOM listener alone (scale-out), with study assembly."""
        import multiprocessing

        from diff3m.db.migrate import upgrade
        from diff3m.db.session import dispose_all
        from diff3m.node.scp import start_listener

        settings = settings_or_exit(config)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # per-message INFO lines cost CPU
        upgrade(settings.database.url)
        # fork the extra listeners first: no thread, socket or pooled connection exists yet
        dispose_all()
        ctx = multiprocessing.get_context("fork")
        ready = [ctx.Event() for _ in range(processes - 1)]
        children = [ctx.Process(target=_listener_process, args=(settings, ev), daemon=True) for ev in ready]
        for child in children:
            child.start()
        for ev in ready:
            ev.wait(60)
        listener = start_listener(settings, shared_port=processes > 1)
        loop = _start_assembly(settings) if assembly else None
        node = settings.node
        typer.echo(f"DICOM listener {node.ae_title} on {node.host}:{listener.port}"
                   f"{' (TLS)' if node.tls_enabled else ''}; Ctrl-C to stop")
        done = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: done.set())
        done.wait()
        listener.stop()
        for child in children:
            child.terminate()
        for child in children:
            child.join(20)
        if loop is not None:
            loop.stop()

    @app.command()
    def send(
        files: Annotated[list[Path] | None, typer.Argument(help="DICOM files or folders")] = None,
        samples: Annotated[bool, typer.Option("--samples", help="send the bundled sample images")] = False,
        host: Annotated[str, typer.Option(help="destination host")] = "127.0.0.1",
        port: Annotated[int | None, typer.Option(help="destination port (default: [node] port)")] = None,
        aet: Annotated[str | None, typer.Option(help="called AE title (default: [node] ae_title)")] = None,
        calling_aet: Annotated[str, typer.Option(help="our AE title")] = "DIFF3M_SEND",
        config: ConfigOption = None,
    ) -> None:
        """Push DICOM files (or the bundled samples) to a node with C-STORE over one association."""
        from diff3m.node.scu import DeliveryError, send_files

        settings = settings_or_exit(config)
        paths = _expand(list(files or []))
        if samples:
            if not SAMPLES_DIR.is_dir():
                typer.echo(f"no bundled samples at {SAMPLES_DIR}", err=True)
                raise typer.Exit(1)
            paths += sorted(SAMPLES_DIR.rglob("*.dcm"))
        if not paths:
            typer.echo("nothing to send: give FILE... or --samples", err=True)
            raise typer.Exit(2)
        try:
            report = send_files(paths, host, port or settings.node.port, aet or settings.node.ae_title,
                                calling_aet=calling_aet)
        except DeliveryError as err:
            typer.echo(f"send failed: {err}", err=True)
            raise typer.Exit(1) from None
        warn = f", {report.warnings} warning(s)" if report.warnings else ""
        typer.echo(f"sent {len(report.sent)} instance(s) to {aet or settings.node.ae_title}@{host}:"
                   f"{port or settings.node.port}{warn}")

    @deliveries_app.command("list")
    def deliveries_list(
        config: ConfigOption = None,
        status: Annotated[str | None, typer.Option(help="pending|in_progress|done|dead")] = None,
        limit: Annotated[int, typer.Option(help="most recent N")] = 50,
    ) -> None:
        """Show outbox entries (newest first)."""
        from rich.console import Console
        from rich.table import Table

        from diff3m.db.models import DeliveryStatus
        from diff3m.db.session import session_scope
        from diff3m.node.outbox import list_deliveries

        settings = settings_or_exit(config)
        try:
            wanted = DeliveryStatus(status) if status else None
        except ValueError:
            typer.echo(f"unknown status {status!r}", err=True)
            raise typer.Exit(2) from None
        table = Table("id", "kind", "destination", "status", "attempts", "next attempt", "study",
                      "last error")
        with session_scope(settings.database.url) as session:
            for d in list_deliveries(session, status=wanted, limit=limit):
                table.add_row(str(d.id), d.kind.value, d.destination, d.status.value,
                              f"{d.attempts}/{d.max_attempts}",
                              d.next_attempt_at.strftime("%Y-%m-%d %H:%M:%S"),
                              str(d.study_id or ""), (d.last_error or "")[:60])
        Console(width=160).print(table)

    @deliveries_app.command("retry")
    def deliveries_retry(
        delivery_id: Annotated[int, typer.Argument(help="outbox entry id")],
        config: ConfigOption = None,
    ) -> None:
        """Put a dead (or pending) delivery back in the queue, due now."""
        from diff3m.db.session import session_scope
        from diff3m.node.outbox import retry

        settings = settings_or_exit(config)
        with session_scope(settings.database.url) as session:
            try:
                retry(session, delivery_id)
            except KeyError:
                typer.echo(f"no delivery {delivery_id}", err=True)
                raise typer.Exit(1) from None
            except ValueError as err:
                typer.echo(str(err), err=True)
                raise typer.Exit(1) from None
        typer.echo(f"delivery {delivery_id} queued again")
