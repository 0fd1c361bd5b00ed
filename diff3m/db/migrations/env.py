"""Alembic environment: uses our engine factory so SQLite gets WAL and PostgreSQL psycopg 3."""

from alembic import context

from diff3m.db.models import Base
from diff3m.db.session import get_engine

config = context.config
url = str(config.attributes.get("url") or config.get_main_option("sqlalchemy.url"))


def run() -> None:
    """Run migrations online against the configured URL."""
    engine = get_engine(url)
    with engine.connect() as conn:
        context.configure(
            connection=conn,
            target_metadata=Base.metadata,
            render_as_batch=conn.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        conn.commit()


run()
