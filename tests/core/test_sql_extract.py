"""SQL-source extract: incremental by cursor with a lookback window, deletions by full run.

``customers`` is read from a SQLite source database; a refresh reads the rows whose
``updated_at`` is at or after the high-water mark less one hour, a full run reads all
rows and soft-deletes the keys gone from the source.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from loader import Warehouse, run_sequence

from .shop import Shop, customers_extract, dump, open_findings, rows, sample_shop, view

HIGH = datetime(2024, 1, 1, 8, 3)


def customers(wh: Warehouse) -> dict[str, str | None]:
    return {r["cust"]: r["seg"] for r in view(wh, "customers")}


def watermark(wh: Warehouse) -> Any:
    with wh.begin() as conn:
        return rows(conn, "SELECT watermark FROM loader_watermarks "
                          "WHERE processor = 'customers_db' AND input = 'source'")[0][0]


def _shop(tmp_path: Path) -> Shop:
    """c0 last changed long before the others; the high-water mark is 08:03."""
    shop = sample_shop(tmp_path / "data")
    shop.put_customer("c0", "A", datetime(2024, 1, 1, 6, 0))
    assert shop.clock == HIGH
    return shop


def test_a_refresh_reads_the_rows_changed_within_the_lookback_window(
        warehouse: Warehouse, tmp_path: Path) -> None:
    """A refresh reads the rows whose cursor is at or after the high-water mark less the
    lookback: a row changed later, a row committed late with a cursor before the mark
    but within the hour, and a new row within the hour are all picked up; the mark
    moves to the largest cursor seen."""
    shop = _shop(tmp_path)
    assert shop.run(warehouse, "full").status == "succeeded"
    assert watermark(warehouse) == "2024-01-01 08:03:00.000000"
    shop.put_customer("c1", "B", HIGH + timedelta(minutes=5))
    shop.put_customer("c2", "C", HIGH - timedelta(minutes=1))
    shop.put_customer("c5", "A", HIGH - timedelta(minutes=59))
    outcome = shop.run(warehouse, "refresh")
    assert outcome.status == "succeeded", outcome.error
    result = outcome.results["customers_db"]
    assert result.details["read"] == "updated_at >= 2024-01-01 07:03:00"
    assert (result.inserted, result.updated) == (1, 2)
    assert customers(warehouse) == {"c0": "A", "c1": "B", "c2": "C", "c3": "A", "c5": "A"}
    assert watermark(warehouse) == "2024-01-01 08:08:00.000000"
    segs = {(r["shop"], r["id"]): r["seg"] for r in view(warehouse, "orders")}
    assert segs == {("east", "1"): "B", ("east", "2"): "C", ("east", "3"): None,
                    ("west", "1"): "A", ("west", "2"): "C"}


def test_a_change_that_does_not_move_the_cursor_is_seen_only_by_a_full_run(
        warehouse: Warehouse, tmp_path: Path) -> None:
    """A row changed without moving ``updated_at`` (older than the lookback window) is
    not read by a refresh, which writes nothing; a full run picks the change up."""
    shop = _shop(tmp_path)
    shop.put_order("west", "3", 1, "1.00", "c0")
    shop.write_orders("west")
    assert shop.run(warehouse, "full").status == "succeeded"
    shop.put_customer("c0", "B", datetime(2024, 1, 1, 6, 0))

    refresh = shop.run(warehouse, "refresh")
    assert refresh.status == "succeeded", refresh.error
    assert refresh.results["customers_db"].rows_read == 3
    assert refresh.results["customers_db"].updated == 0
    assert customers(warehouse)["c0"] == "A"

    full = shop.run(warehouse, "full")
    assert full.status == "succeeded", full.error
    assert full.results["customers_db"].updated == 1
    assert customers(warehouse)["c0"] == "B"
    assert {r["id"]: r["seg"] for r in view(warehouse, "orders") if r["shop"] == "west"}[
        "3"] == "B"
    assert {r["seg"]: r["n"] for r in view(warehouse, "seg_totals")} == {
        "A": 2, "B": 3, None: 1}


def test_a_full_run_soft_deletes_keys_gone_from_the_source(warehouse: Warehouse,
                                                           tmp_path: Path) -> None:
    """A key deleted in the source stays through a refresh and is soft-deleted by a full
    run: gone from the view, kept in ``customers_tracked`` with ``_deleted_at``; the
    orders of that customer lose their segment and become findings."""
    shop = _shop(tmp_path)
    assert shop.run(warehouse, "full").status == "succeeded"
    shop.delete_customer("c2")
    assert shop.run(warehouse, "refresh").status == "succeeded"
    assert "c2" in customers(warehouse)

    full = shop.run(warehouse, "full")
    assert full.status == "succeeded", full.error
    assert full.results["customers_db"].deleted == 1
    assert customers(warehouse) == {"c0": "A", "c1": "A", "c3": "A"}
    tracked = {r["cust"]: r for r in dump(warehouse)["customers_tracked"]}
    assert tracked["c2"]["_deleted_at"] is not None
    assert tracked["c2"]["seg"] == "B"
    assert {(r["shop"], r["id"]): r["seg"] for r in view(warehouse, "orders")
            if r["cust"] == "c2"} == {("east", "2"): None, ("west", "2"): None}
    assert open_findings(warehouse) == {
        ("unknown_customer", "east:2", "customer c2 not found"),
        ("unknown_customer", "east:3", "customer c9 not found"),
        ("unknown_customer", "west:2", "customer c2 not found"),
    }
    assert "B" not in {r["seg"] for r in view(warehouse, "seg_totals")}


def _drop_table(shop: Shop) -> None:
    with sqlite3.connect(shop.db_path) as db:
        db.execute("DROP TABLE customers")
    db.close()


def _drop_column(shop: Shop) -> None:
    with sqlite3.connect(shop.db_path) as db:
        db.execute("ALTER TABLE customers RENAME TO old_customers")
        db.execute("CREATE TABLE customers AS SELECT cust, updated_at FROM old_customers")
    db.close()


def _remove_database(shop: Shop) -> None:
    shop.db_path.unlink()


BROKEN_SOURCES = {
    "missing_table": (_drop_table, ["table customers", "no such table"]),
    "missing_column": (_drop_column, ["table customers", "missing column 'seg'"]),
    "missing_database": (_remove_database, ["shop.db", "does not exist"]),
}


@pytest.mark.parametrize("broken", list(BROKEN_SOURCES))
@pytest.mark.parametrize("mode", ["refresh", "full"])
def test_a_missing_source_table_or_column_is_a_clear_error(
        warehouse: Warehouse, tmp_path: Path, broken: str, mode: str) -> None:
    """A source table, column or database that is not there fails the run with an error
    naming it, and changes nothing in the warehouse."""
    damage, named = BROKEN_SOURCES[broken]
    shop = _shop(tmp_path)
    assert shop.run(warehouse, "full").status == "succeeded"
    before = dump(warehouse, meta=True)
    damage(shop)
    outcome = run_sequence(warehouse, [customers_extract()], mode=mode,  # type: ignore[arg-type]
                           params=shop.params)
    assert outcome.status == "failed"
    for text in named:
        assert text in (outcome.error or "")
    assert dump(warehouse, meta=True) == before


@pytest.mark.postgres
def test_a_postgresql_source_in_another_time_zone_misses_no_change(
        warehouse: Warehouse, pg_url: str) -> None:
    """A PostgreSQL source whose ``updated_at`` is ``timestamptz`` and whose sessions run
    in another time zone (America/New_York) still gives a refresh the rows changed after
    the high-water mark."""
    source_url = f"{pg_url}%20-ctimezone%3DAmerica/New_York"
    engine = sa.create_engine(source_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE customers "
                                 "(cust text PRIMARY KEY, seg text, updated_at timestamptz)")
            conn.exec_driver_sql(
                "INSERT INTO customers VALUES ('c1', 'A', '2024-01-01 10:00:00+00')")
        extract = dataclasses.replace(customers_extract(), url_default=None)
        params = {"source_url": source_url}
        first = run_sequence(warehouse, [extract], mode="full", params=params)
        assert first.status == "succeeded", first.error
        assert watermark(warehouse) == "2024-01-01 10:00:00.000000"
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE customers SET seg = 'B', "
                                 "updated_at = '2024-01-01 10:30:00+00'")
        refresh = run_sequence(warehouse, [extract], mode="refresh", params=params)
        assert refresh.status == "succeeded", refresh.error
        assert customers(warehouse) == {"c1": "B"}
    finally:
        engine.dispose()
