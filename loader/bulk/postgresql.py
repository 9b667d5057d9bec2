"""PostgreSQL bulk path: ``COPY ... FROM STDIN`` through psycopg 3.

Rows stream into COPY as they are produced, so the server ingests while the
loader parses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection


@contextmanager
def writer(conn: Connection, table: sa.Table) -> Iterator[Callable[[Sequence[Any]], None]]:
    preparer = conn.dialect.identifier_preparer
    columns = ", ".join(preparer.quote(c.name) for c in table.columns)
    sql = f"COPY {preparer.quote(table.name)} ({columns}) FROM STDIN"
    driver = conn.connection.driver_connection
    assert driver is not None
    with driver.cursor() as cursor, cursor.copy(sql) as copy:
        yield copy.write_row
