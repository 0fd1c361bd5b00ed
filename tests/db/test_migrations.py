"""Migrations run forward (and back) on SQLite and PostgreSQL and match the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from diff3m.db.migrate import current, downgrade, upgrade
from diff3m.db.models import Base
from diff3m.db.session import get_engine

TABLES = {"studies", "instances", "ehr_snapshots", "inference_results", "output_objects",
          "deliveries", "audit_events"}


def _check(url: str) -> None:
    upgrade(url)
    engine = get_engine(url)
    assert TABLES <= set(inspect(engine).get_table_names())
    assert current(url) is not None
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"models and migrations differ: {diff}"
    downgrade(url, "base")
    assert not (TABLES & set(inspect(engine).get_table_names()))
    upgrade(url)
    assert TABLES <= set(inspect(engine).get_table_names())


def test_migrations_sqlite(tmp_path):
    _check(f"sqlite:///{tmp_path / 'm.sqlite'}")


def test_migrations_postgresql(postgres_url):
    _check(postgres_url)


def test_sqlite_uses_wal(sqlite_url):
    with get_engine(sqlite_url).connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
