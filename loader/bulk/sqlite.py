"""SQLite bulk path: ``executemany`` in batches inside the open transaction.

Values pass through each column type's bind processor first (decimals to
REAL, timestamps to ISO text), exactly as SQLAlchemy would store them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

BATCH = 20_000


@contextmanager
def writer(conn: Connection, table: sa.Table) -> Iterator[Callable[[Sequence[Any]], None]]:
    preparer = conn.dialect.identifier_preparer
    columns = ", ".join(preparer.quote(c.name) for c in table.columns)
    marks = ", ".join("?" for _ in table.columns)
    sql = f"INSERT INTO {preparer.quote(table.name)} ({columns}) VALUES ({marks})"
    processors = [c.type._cached_bind_processor(conn.dialect) for c in table.columns]
    converters = [(i, p) for i, p in enumerate(processors) if p is not None]
    driver = conn.connection.driver_connection
    assert driver is not None, "a pooled connection always has its driver connection"
    cursor = driver.cursor()
    batch: list[Sequence[Any]] = []

    def put(row: Sequence[Any]) -> None:
        if converters:
            values = list(row)
            for i, process in converters:
                values[i] = process(values[i])
            row = values
        batch.append(row)
        if len(batch) >= BATCH:
            cursor.executemany(sql, batch)
            batch.clear()

    try:
        yield put
        if batch:
            cursor.executemany(sql, batch)
    finally:
        cursor.close()
