"""Web test fixtures: settings on a migrated database, the seeded worklist, a TestClient."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from diff3m.config import Settings
from diff3m.web.app import create_app
from tests.web.factory import WORKLIST, Seeded, make_settings, seed


@pytest.fixture
def settings(sqlite_url: str, tmp_path: Path) -> Settings:
    """Settings on a fresh migrated SQLite database."""
    return make_settings(sqlite_url, tmp_path)


@pytest.fixture
def seeded(settings: Settings) -> dict[int, Seeded]:
    """The demo worklist inserted: seed number -> what was inserted."""
    return {s.n: seed(settings, s) for s in WORKLIST}


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """A TestClient on the app (no token: loopback); no model loaded in this process."""
    from diff3m.pipeline.model_cache import clear

    clear()  # another test may have scored in this process; readiness must not see its model
    with TestClient(create_app(settings)) as c:
        yield c
