"""A derive that rewrites most of a table on PostgreSQL builds the indexes afterwards,
in a transaction of their own.

The thresholds are lowered so that the small shop takes that path; a second warehouse
takes the ordinary path, and both must show the same outputs and keep the same indexes.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import pg_schema_url, warehouse_on

from loader import Warehouse
from loader.processors import derive

from .shop import outputs, sample_shop, view

pytestmark = pytest.mark.postgres


def indexes(wh: Warehouse) -> set[tuple[str, str]]:
    with wh.begin() as conn:
        return {(r[0], r[1].split(" ON ", 1)[1].split(" USING ")[1]) for r in conn.execute(
            sa.text("SELECT indexname, indexdef FROM pg_indexes"
                    " WHERE schemaname = current_schema()"))}


def test_the_rewrite_path_gives_the_ordinary_results(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    with warehouse_on("postgresql", tmp_path) as ordinary, \
            warehouse_on("postgresql", tmp_path) as rewritten:
        shop = sample_shop(tmp_path / "data")

        rebuilt: list[str] = []
        original = derive.pg_bulk.drop_indexes

        def spy(conn: sa.Connection, table: str) -> Any:
            rebuilt.append(table)
            return original(conn, table)

        def both(mode: str) -> None:
            assert shop.run(ordinary, mode).status == "succeeded"
            with monkeypatch.context() as patch:
                patch.setattr(derive, "REWRITE_AT_LEAST", 1)
                patch.setattr(derive, "REWRITE_SHARE", 0.0)
                patch.setattr(derive.pg_bulk, "drop_indexes", spy)
                rebuilt.clear()
                outcome = shop.run(rewritten, mode)
                assert "orders_tracked" in rebuilt
            assert outcome.status == "succeeded", outcome.error
            assert outputs(rewritten) == outputs(ordinary)

        both("full")
        shop.put_order("east", "1", 7, "3.50", "c2")
        shop.put_order("west", "9", 1, "4.00", "c1")
        shop.write_orders("east")
        shop.write_orders("west")
        both("refresh")
        assert indexes(rewritten) == indexes(ordinary)
        assert any(name.endswith("_pkey") for name, _ in indexes(rewritten))
        # the lookup's index, built after the first write on both paths
        assert ("ix_orders__cust", "btree (cust)") in indexes(rewritten)


def test_indexes_lost_after_the_commit_are_built_by_the_next_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rewrite commits its rows, then builds the indexes it dropped in a second
    transaction. Should that fail, the rows stay written, and the next run builds
    every missing index (the primary key too) and changes nothing else."""
    with warehouse_on("postgresql", tmp_path) as ordinary, \
            warehouse_on("postgresql", tmp_path) as broken:
        shop = sample_shop(tmp_path / "data")
        assert shop.run(ordinary, "full").status == "succeeded"

        def fail(*args: Any) -> None:
            raise RuntimeError("lost the connection while building indexes")

        with monkeypatch.context() as patch:
            patch.setattr(derive, "REWRITE_AT_LEAST", 1)
            patch.setattr(derive, "REWRITE_SHARE", 0.0)
            patch.setattr(derive.Derive, "_build_indexes", staticmethod(fail))
            outcome = shop.run(broken, "full")
        assert outcome.status == "failed" and "building indexes" in (outcome.error or "")
        assert not any(name.endswith("_pkey") and "orders" in name
                       for name, _ in indexes(broken))
        assert view(broken, "orders") == view(ordinary, "orders")

        assert shop.run(broken, "refresh").status == "succeeded"
        assert indexes(broken) == indexes(ordinary)
        assert outputs(broken) == outputs(ordinary)


def test_whole_table_reads_plan_with_the_default_page_cost() -> None:
    """Sessions plan index lookups as cheap; a full aggregate rebuild plans its grouping
    with PostgreSQL's default cost instead, and the session's cost is back afterwards."""
    from loader.bulk import postgresql as pg_bulk

    with contextlib.contextmanager(pg_schema_url)() as url:
        wh = Warehouse(url)
        try:
            with wh.begin() as conn:
                def cost() -> float:
                    return float(conn.exec_driver_sql("SHOW random_page_cost").scalar_one())

                session = cost()
                assert session < pg_bulk.SCAN_PAGE_COST
                with pg_bulk.planned_as_scans(conn):
                    assert cost() == pg_bulk.SCAN_PAGE_COST
                assert cost() == session
        finally:
            wh.dispose()


def test_sessions_run_without_jit_unless_the_url_asks_for_it() -> None:
    """The loader's sessions turn JIT compilation off and keep UTC; an ``options`` of the
    URL that sets ``jit`` wins, and the search path it sets stays."""
    with contextlib.contextmanager(pg_schema_url)() as url:
        schema = url.rsplit("%3D", 1)[1]
        for given, expected in ((url, "off"), (f"{url}%20-cjit%3Don", "on")):
            wh = Warehouse(given, migrate=False)
            try:
                with wh.engine.connect() as conn:
                    def show(name: str) -> str:
                        return str(conn.exec_driver_sql(f"SHOW {name}").scalar_one())

                    assert (show("jit"), show("timezone"), show("search_path")) == (
                        expected, "UTC", schema)
            finally:
                wh.dispose()
