"""The ``diff3m`` command: every entry point of the node, each area registering its own commands."""

from __future__ import annotations

import importlib
import json

import typer

from diff3m import __version__
from diff3m.cli_common import ConfigOption, settings_or_exit

app = typer.Typer(
    name="diff3m",
    help="Diff3M node: chest X-ray anomaly detection beside your PACS (DICOM, FHIR, worklist).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
db_app = typer.Typer(help="Manage the database schema.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")


@app.command()
def version() -> None:
    """Print the node's version."""
    typer.echo(__version__)


@config_app.command("show")
def config_show(config: ConfigOption = None) -> None:
    """Print the effective configuration (file + environment + defaults), secrets masked."""
    settings = settings_or_exit(config)
    typer.echo(json.dumps(settings.masked(), indent=2))


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None, revision: str = "head") -> None:
    """Migrate the database forward (``serve`` does this on start)."""
    from diff3m.db.migrate import upgrade

    settings = settings_or_exit(config)
    upgrade(settings.database.url, revision)
    typer.echo(f"database at {revision}")


# Each area adds its commands through ``register(app)`` in its own module.
COMMAND_MODULES = (
    "diff3m.models.commands",
    "diff3m.models.data.commands",
    "diff3m.node.commands",
    "diff3m.fhir.commands",
    "diff3m.pipeline.commands",
    "diff3m.web.commands",
    "diff3m.bench.commands",
)

for _name in COMMAND_MODULES:
    try:
        _module = importlib.import_module(_name)
    except ModuleNotFoundError as _err:
        if not _err.name or not _name.startswith(_err.name):  # a real import error inside it
            raise
        continue
    _module.register(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
