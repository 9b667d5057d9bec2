"""The warehouse: one SQLAlchemy engine, its clock, and safe defaults per dialect.

SQLite is the embedded default and needs no service; PostgreSQL is the
production warehouse. On SQLite every transaction starts with
``BEGIN IMMEDIATE`` so that concurrent writers queue on the database lock
instead of failing half-way, and the journal is in WAL mode so readers never
wait for a writer.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from loader.coltypes import register_sqlite_functions
from loader.errors import ConfigError

DEFAULT_URL = "sqlite:///warehouse.db"
_SECRET_IN_URL = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@")


def mask_url(text: str) -> str:
    """Replace the password of every URL in ``text`` with ``***``."""
    return _SECRET_IN_URL.sub(r"\g<head>***@", text)


def warehouse_url(url: str | None = None) -> str:
    """The warehouse URL: the argument, else ``LOADER_WAREHOUSE_URL``, else SQLite."""
    return url or os.environ.get("LOADER_WAREHOUSE_URL") or DEFAULT_URL


def create_engine(url: str) -> Engine:
    """An engine with the loader's settings for its dialect."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigError(f"not a database URL: {mask_url(url)!r} ({exc})") from None
    if parsed.get_backend_name() == "postgresql":
        return postgresql_engine(parsed, pool_pre_ping=True)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(parsed, connect_args={"timeout": 300})
        _make_sqlite_transactional(engine)
        return engine
    raise ConfigError(
        f"unsupported warehouse {mask_url(url)!r}: use sqlite:///FILE or postgresql://..."
    )


def postgresql_engine(url: sa.URL, **kwargs: Any) -> Engine:
    """A psycopg 3 engine whose sessions run in UTC without JIT compilation, keeping
    any ``options`` of the URL."""
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    options = " ".join(filter(None, [
        # Compiling a statement's expressions to machine code cost 8-27 ms, and is
        # chosen by cost estimates that a join with a staged table can inflate far past
        # the rows it reads; a refresh is many such short statements. A URL's own
        # options, which follow, may turn it back on.
        "-c jit=off",
        str(url.query.get("options", "")),
        "-c timezone=UTC",
        # Streamed reads want the whole result, not a fast start.
        "-c cursor_tuple_fraction=1",
        # Warehouse tables are read through their indexes from cache or SSD, where a
        # random page costs little more than a sequential one (the default assumes disks).
        "-c random_page_cost=1.1",
    ]))
    url = url.difference_update_query(["options"])
    return sa.create_engine(url, connect_args={"options": options}, **kwargs)


SORT_THREADS = min(4, os.cpu_count() or 1)


def _make_sqlite_transactional(engine: Engine) -> None:
    """Let SQLAlchemy, not the sqlite3 module, decide where transactions begin."""

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        register_sqlite_functions(dbapi_connection)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA cache_size=-16384")
        # Helper threads for the sorts of CREATE INDEX, GROUP BY and ORDER BY: building
        # an index over three columns of 1,000,000 sales took 1.5-1.9 s without, 1.0-1.3 s
        # with two.
        cursor.execute(f"PRAGMA threads={SORT_THREADS}")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        # A reading part (Warehouse.reading_first) takes no lock that writers wait for.
        connection.exec_driver_sql(
            "BEGIN" if connection.info.get(READING_FIRST) else "BEGIN IMMEDIATE")


READING_FIRST = "loader_reading_first"


class Warehouse:
    """A warehouse database: where tracked tables, history and state live."""

    def __init__(self, url: str | None = None, *, migrate: bool = True) -> None:
        self.url = warehouse_url(url)
        self.engine = create_engine(self.url)
        self._migrated = False
        if migrate:
            self.migrate()

    def __repr__(self) -> str:
        return f"Warehouse({mask_url(self.url)!r})"

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    @property
    def masked_url(self) -> str:
        return mask_url(self.url)

    def migrate(self) -> None:
        """Apply the loader's Alembic migrations once per process."""
        if not self._migrated:
            from loader.migrate import upgrade

            upgrade(self.engine)
            self._migrated = True

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A connection in a transaction that commits on success."""
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def reading_first(self) -> Iterator[tuple[Connection, Callable[[], None]]]:
        """A connection whose work reads (and writes temporary tables) before it writes,
        and the function to call before its first write to the warehouse.

        On SQLite the reading part runs in a deferred transaction, which keeps no other
        writer waiting; the function commits it, and the next statement begins the
        writing transaction (``BEGIN IMMEDIATE``) on the same connection, whose
        temporary tables carry over. The writing part commits at the end of the block
        or rolls back; a connection that fails is discarded with its temporary tables.
        Elsewhere the block is one transaction and the function does nothing.
        """
        with self.engine.connect() as conn:
            if conn.dialect.name != "sqlite":
                with conn.begin():
                    yield conn, lambda: None
                return

            def write() -> None:
                if conn.info.pop(READING_FIRST, False) and conn.in_transaction():
                    conn.commit()

            conn.info[READING_FIRST] = True
            try:
                yield conn, write
                conn.commit()
            except BaseException:
                conn.rollback()
                conn.invalidate()
                raise
            finally:
                conn.info.pop(READING_FIRST, None)

    def dispose(self) -> None:
        self.engine.dispose()


def db_now(conn: Connection) -> datetime:
    """The database server's current UTC time, as a naive datetime."""
    if conn.dialect.name == "postgresql":
        value = conn.exec_driver_sql(
            "SELECT (clock_timestamp() AT TIME ZONE 'UTC')"
        ).scalar_one()
    else:
        value = conn.exec_driver_sql(
            "SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')"
        ).scalar_one()
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=None)


TICK = timedelta(microseconds=1)
