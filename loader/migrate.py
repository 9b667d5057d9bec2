"""Apply the loader's Alembic migrations from the library.

The same scripts serve ``alembic upgrade head`` at the repository root and
``loader init``; the library runs them on first use of a warehouse. On
PostgreSQL an advisory lock keeps two workers from migrating at once.

Alembic is imported only to migrate: a warehouse already at :data:`HEAD` is
told by one query of its version table, so ``loader`` commands and workers
open it without importing Alembic or reading the scripts (0.17 s of a no-op
``loader run``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Engine

if TYPE_CHECKING:
    from alembic.config import Config

VERSION_TABLE = "loader_alembic_version"
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
# The newest revision in MIGRATIONS; a test holds it to the scripts' own head.
HEAD = "0005"
_ADVISORY_KEY = 7_240_001


def alembic_config() -> Config:
    """An Alembic configuration pointing at the loader's migration scripts."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str | None:
    """The head revision of the migration scripts, as Alembic reads them."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The warehouse's revision: None before the first migration."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(VERSION_TABLE):
            return None
        versions = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars()
        found = list(versions)
    return found[0] if len(found) == 1 else None


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the loader's tables to ``revision`` (a no-op when already there)."""
    if revision == "head" and current_revision(engine) == HEAD:
        return
    from alembic import command

    config = alembic_config()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_ADVISORY_KEY})")
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
