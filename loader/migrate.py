"""Apply the loader's Alembic migrations from the library.

The same scripts serve ``alembic upgrade head`` at the repository root and
``loader init``; the library runs them on first use of a warehouse. On
PostgreSQL an advisory lock keeps two workers from migrating at once.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

VERSION_TABLE = "loader_alembic_version"
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
_ADVISORY_KEY = 7_240_001


def alembic_config() -> Config:
    """An Alembic configuration pointing at the loader's migration scripts."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the loader's tables to ``revision`` (a no-op when already there)."""
    if revision == "head" and current_revision(engine) == head_revision():
        return
    config = alembic_config()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_ADVISORY_KEY})")
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
