"""Database: SQLAlchemy models, sessions and Alembic migrations."""

from diff3m.db.migrate import upgrade
from diff3m.db.session import get_engine, session_factory, session_scope

__all__ = ["get_engine", "session_factory", "session_scope", "upgrade"]
