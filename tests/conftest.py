"""Shared fixtures: real PostgreSQL, Redis, Orthanc, storescp; a fresh SQLite database per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import services
from tests.fhir_server import FhirDevServer, fhir_dev_server

os.environ.setdefault("DIFF3M_TESTING", "1")


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """URL of a PostgreSQL server (local or throwaway)."""
    with services.postgres_server() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for one test, dropped afterwards."""
    from diff3m.db.migrate import upgrade

    url = services.create_database(postgres_server_url)
    upgrade(url)
    try:
        yield url
    finally:
        from diff3m.db.session import dispose_all

        dispose_all()
        services.drop_database(url)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a Redis server (local or throwaway)."""
    with services.redis_server() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh, migrated SQLite database."""
    from diff3m.db.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'diff3m.sqlite'}"
    upgrade(url)
    return url


@pytest.fixture
def orthanc() -> Iterator[services.Orthanc]:
    """A throwaway Orthanc PACS."""
    with services.orthanc_server() as o:
        yield o


@pytest.fixture
def fhir_server() -> Iterator[FhirDevServer]:
    """A throwaway dev FHIR server (real FHIR R4 engine) seeded with the demo patients."""
    with fhir_dev_server() as server:
        yield server


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny-profile Diff3M checkpoint trained for a few steps on synthetic images (seconds)."""
    import torch

    from tests.models.synthetic import write_tiny_checkpoint

    torch.set_num_threads(1)  # tiny nets: threads only contend on the shared CPU
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny_checkpoint"))


@pytest.fixture
def storescp() -> Iterator[services.StoreScp]:
    """A throwaway dcmtk storescp."""
    with services.storescp_server() as s:
        yield s
