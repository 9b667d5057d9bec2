"""Bulk staging: load many rows into a temporary table in one go.

Each dialect has its own module with the fastest path it offers (COPY on
PostgreSQL, ``executemany`` in the open transaction on SQLite), chosen from
``WRITERS``. Everything after staging is set-based SQL shared by both.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loader.bulk import postgresql, sqlite

Put = Callable[[Sequence[Any]], None]
WRITERS = {"postgresql": postgresql.writer, "sqlite": sqlite.writer}
_names = itertools.count(1)


@contextmanager
def stage(conn: Connection, hint: str, columns: Sequence[tuple[str, sa.types.TypeEngine[Any]]],
          key: Sequence[str] = ()) -> Iterator[sa.Table]:
    """A temporary table with ``columns``, dropped when the block ends.

    On SQLite, which joins by nested loops, ``key`` columns get an index so
    that lookups into the stage do not scan it.
    """
    name = f"_stage_{hint}_{next(_names)}"
    if len(name) > 60:
        digest = hashlib.blake2b(hint.encode(), digest_size=4).hexdigest()
        name = f"_stage_{hint[:30]}_{digest}_{next(_names)}"
    table = sa.Table(
        name, sa.MetaData(), *(sa.Column(n, t) for n, t in columns),
        prefixes=["TEMPORARY"], postgresql_on_commit="DROP",
    )
    table.create(conn)
    if key and conn.dialect.name == "sqlite":
        sa.Index(f"{name}_key", *(table.c[k] for k in key)).create(conn)
    yield table
    # On error the transaction rolls back, and the table with it.
    table.drop(conn)


@contextmanager
def writer(conn: Connection, table: sa.Table) -> Iterator[Put]:
    """A function that appends one row (a tuple in column order) to ``table``."""
    try:
        factory = WRITERS[conn.dialect.name]
    except KeyError:
        raise NotImplementedError(f"no bulk writer for {conn.dialect.name}") from None
    with factory(conn, table) as put:
        yield put


def analyze(conn: Connection, table: sa.Table | str) -> None:
    """Refresh the planner's statistics of ``table``.

    On PostgreSQL: temporary tables are never analysed automatically, and a tracked
    table that just received many rows has stale statistics until autovacuum catches
    up; without this the planner picks plans made for empty tables. On SQLite, only
    temporary (stage) tables: without statistics SQLite takes a stage of ten thousand
    rows for as big as the table it is joined to, and may scan that table to look the
    stage up, instead of the other way round.
    """
    name = table if isinstance(table, str) else table.name
    quoted = conn.dialect.identifier_preparer.quote(name)
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"ANALYZE {quoted}")
    elif conn.dialect.name == "sqlite" and conn.exec_driver_sql(
            "SELECT 1 FROM sqlite_temp_master WHERE type = 'table' AND name = ?",
            (name,)).first() is not None:
        conn.exec_driver_sql(f"ANALYZE temp.{quoted}")


def load(conn: Connection, table: sa.Table, rows: Iterable[Sequence[Any]]) -> int:
    """Append all ``rows`` to ``table``; returns how many."""
    count = 0
    with writer(conn, table) as put:
        for row in rows:
            put(row)
            count += 1
    return count


def insert_from(conn: Connection, table: sa.Table,
                query: sa.Select[Any] | sa.CompoundSelect[Any]) -> int:
    """INSERT ... SELECT ``query`` into ``table``; returns the number of rows."""
    return conn.execute(sa.insert(table).from_select([c.name for c in table.columns], query),
                        execution_options={"preserve_rowcount": True}).rowcount
