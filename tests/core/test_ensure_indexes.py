"""ensure_indexes builds exactly the indexes a tracked table is missing, its key too."""

from __future__ import annotations

import re
from datetime import datetime

import sqlalchemy as sa

from loader import Warehouse
from loader.tracking import Col, TrackedTable, ensure_indexes, ensure_table

NOW = datetime(2026, 12, 1, 6, 0)
CREATES = re.compile(r"\s*(CREATE (UNIQUE )?INDEX|ALTER TABLE \S+ ADD)")


def _table() -> TrackedTable:
    return TrackedTable("Orders", (Col("id"),), (Col("cust"), Col("total", "decimal:2")),
                        indexes=(("cust",),))


def _index_names(conn: sa.Connection) -> set[str]:
    return {ix["name"] for ix in sa.inspect(conn).get_indexes("Orders_tracked")}


def test_only_missing_indexes_are_built(warehouse: Warehouse, statements: list[str]) -> None:
    """With every index present nothing is built; dropped ones (on PostgreSQL the primary
    key too) are built again under their own names, in a table whose name needs quoting."""
    with warehouse.begin() as conn:
        table = ensure_table(conn, _table(), run_id=None, now=NOW)
        wanted = _index_names(conn)
        assert len(wanted) >= 2
        keyed = sa.inspect(conn).get_pk_constraint("Orders_tracked")["constrained_columns"]
    statements.clear()
    with warehouse.begin() as conn:
        ensure_indexes(conn, table)
    assert not [s for s in statements if CREATES.match(s)]

    dropped = sorted(wanted)[:2]
    with warehouse.begin() as conn:
        for name in dropped:
            conn.exec_driver_sql(f'DROP INDEX "{name}"')
        if warehouse.dialect == "postgresql":
            conn.exec_driver_sql('ALTER TABLE "Orders_tracked" DROP CONSTRAINT '
                                 '"Orders_tracked_pkey"')
        assert _index_names(conn) == wanted - set(dropped)
    statements.clear()
    with warehouse.begin() as conn:
        ensure_indexes(conn, table)
        assert _index_names(conn) == wanted
        assert sa.inspect(conn).get_pk_constraint("Orders_tracked")[
            "constrained_columns"] == keyed == ["id"]
    assert len([s for s in statements if CREATES.match(s)]) == len(dropped) + (
        warehouse.dialect == "postgresql")
