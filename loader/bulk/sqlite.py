"""SQLite bulk path: ``executemany`` in batches inside the open transaction.

Values pass through each column type's bind processor first (decimals to
REAL, timestamps to ISO text), exactly as SQLAlchemy would store them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.selectable import Alias

BATCH = 20_000


class Batches:
    """Rows appended to one table, ``BATCH`` at a time through one ``executemany``."""

    def __init__(self, conn: Connection, table: sa.Table) -> None:
        preparer = conn.dialect.identifier_preparer
        columns = ", ".join(preparer.quote(c.name) for c in table.columns)
        marks = ", ".join("?" for _ in table.columns)
        self._sql = f"INSERT INTO {preparer.quote(table.name)} ({columns}) VALUES ({marks})"
        processors = [c.type._cached_bind_processor(conn.dialect) for c in table.columns]
        self._converters = [(i, p) for i, p in enumerate(processors) if p is not None]
        driver = conn.connection.driver_connection
        assert driver is not None, "a pooled connection always has its driver connection"
        self._cursor = driver.cursor()
        self._batch: list[Sequence[Any]] = []

    def put(self, row: Sequence[Any]) -> None:
        """Append one row of Python values (a tuple in column order)."""
        if self._converters:
            values = list(row)
            for i, process in self._converters:
                values[i] = process(values[i])
            row = values
        self._batch.append(row)
        if len(self._batch) >= BATCH:
            self.flush()

    def put_stored(self, rows: Iterable[Sequence[Any]]) -> None:
        """Append rows whose values are already what SQLite stores: what the column
        types' bind processors make of the Python values."""
        self._batch.extend(rows)
        if len(self._batch) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if self._batch:
            self._cursor.executemany(self._sql, self._batch)
            self._batch.clear()

    def close(self) -> None:
        self._cursor.close()


@contextmanager
def batches(conn: Connection, table: sa.Table) -> Iterator[Batches]:
    """``Batches`` into ``table``; what is left is written when the block ends."""
    out = Batches(conn, table)
    try:
        yield out
        out.flush()
    finally:
        out.close()


@contextmanager
def writer(conn: Connection, table: sa.Table) -> Iterator[Callable[[Sequence[Any]], None]]:
    """A function that appends one row (a tuple in column order) to ``table``."""
    with batches(conn, table) as out:
        yield out.put


@contextmanager
def indexes_built_after(conn: Connection, table: str, columns: Sequence[str]) -> Iterator[None]:
    """Drop ``table``'s indexes over any of ``columns`` for the block, then build them
    again, in the caller's transaction.

    SQLite updates an index for every row an UPDATE writes when the index holds a column
    it sets; sorting the table into a new index once is faster when most rows change.
    Indexes that back a key (which SQLite makes itself) stay.
    """
    preparer = conn.dialect.identifier_preparer
    wanted = {c.lower() for c in columns}
    dropped = []
    for name, sql in conn.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
            "AND sql IS NOT NULL ORDER BY name", (table,)).all():
        covered = [row[2] for row in conn.exec_driver_sql(
            f"PRAGMA index_info({preparer.quote(name)})").all()]
        # An expression (no column name) may use any column.
        if any(c is None or c.lower() in wanted for c in covered):
            conn.exec_driver_sql(f"DROP INDEX {preparer.quote(name)}")
            dropped.append(sql)
    yield
    for sql in dropped:
        conn.exec_driver_sql(sql)


class _Scanned(Alias):
    """An alias that SQLite reads without an index (``NOT INDEXED``)."""

    inherit_cache = True


@compiles(_Scanned, "sqlite")
def _scanned_sqlite(element: _Scanned, compiler: Any, **kw: Any) -> str:
    text: str = compiler.visit_alias(element, **kw)
    return f"{text} NOT INDEXED" if kw.get("asfrom") else text


@compiles(_Scanned)
def _scanned_default(element: _Scanned, compiler: Any, **kw: Any) -> str:
    text: str = compiler.visit_alias(element, **kw)
    return text


def scanned(table: sa.Table) -> sa.FromClause:
    """``table`` under its own name, read on SQLite in table order, with no index; on
    other dialects a plain alias.

    For a statement that reads every row: SQLite would otherwise follow an index on a
    column it filters or groups by, and fetch the rows it points to one at a time.
    """
    return _Scanned._construct(table, name=table.name)
