"""Pieces every CLI command shares: the --config option and loading settings with a clear error."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from diff3m.config import ConfigError, Settings, load_settings

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML config file; DIFF3M_<SECTION>__<KEY> env vars override it."),
]


@contextmanager
def config_errors_exit() -> Iterator[None]:
    """A ConfigError inside (a bad setting, naming its key) prints its reason and exits with status 2."""
    try:
        yield
    except ConfigError as err:
        print(f"diff3m: {err}", file=sys.stderr)
        raise typer.Exit(2) from None


def settings_or_exit(config: Path | None) -> Settings:
    """Load settings, or print the reason (naming the key) and exit with status 2."""
    with config_errors_exit():
        return load_settings(config)
