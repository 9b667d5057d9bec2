"""A refresh that finds nothing written to its inputs since its watermark does no work.

Derive, aggregate and quality look once at each input's ``_changed_at`` index and,
when no run wrote there since they last ran, stage nothing and only move their
watermarks. A write to any input, a lookup's included, makes them work as before.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa

from loader import Warehouse, meta
from loader.state import get_watermark
from loader.tracking import written_after

from .shop import Shop, flow, fresh_full_outputs, outputs, sample_shop

# The temporary stages of the derive, the aggregate and the quality rules.
DOWNSTREAM_STAGES = re.compile(r"\s*CREATE TEMPORARY TABLE _stage_(order_values|by_seg|"
                               r"order_checks)_")


def _latest_run_ts(wh: Warehouse) -> datetime:
    with wh.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.max(meta.runs.c.run_ts))).scalar_one()


def _written(wh: Warehouse, tables: list[str], since: datetime) -> bool:
    with wh.engine.connect() as conn:
        return written_after(conn, tables, since)


def _refresh_one(shop: Shop, wh: Warehouse, name: str) -> None:
    """A refresh of the shop processor ``name`` alone."""
    outcome = shop.run(wh, "refresh", [p for p in flow() if p.name == name])
    assert outcome.status == "succeeded", outcome.error


def test_written_after_sees_each_kind_of_write(warehouse: Warehouse, tmp_path: Path) -> None:
    """False for tables no run wrote since ``since``; True once a run changed a cell of
    one of them, added a row or deleted one."""
    shop = sample_shop(tmp_path / "data")
    assert shop.run(warehouse, "full").status == "succeeded"
    since = _latest_run_ts(warehouse)
    assert not _written(warehouse, ["orders", "customers", "seg_totals"], since)

    shop.put_customer("c1", "B")  # a changed cell
    _refresh_one(shop, warehouse, "customers_db")
    assert _written(warehouse, ["customers"], since)
    assert _written(warehouse, ["orders", "customers"], since)
    assert not _written(warehouse, ["orders", "seg_totals"], since)

    since = _latest_run_ts(warehouse)
    shop.put_order("east", "4", 1, "1.00", "c1")  # a new row
    shop.write_orders("east")
    _refresh_one(shop, warehouse, "orders_csv")
    assert _written(warehouse, ["customers", "orders"], since)
    assert not _written(warehouse, ["customers"], since)

    since = _latest_run_ts(warehouse)
    del shop.orders["west"]["2"]  # a deleted row
    shop.write_orders("west")
    _refresh_one(shop, warehouse, "orders_csv")
    assert _written(warehouse, ["orders"], since)


def test_a_refresh_after_no_writes_stages_nothing_downstream(
        warehouse: Warehouse, tmp_path: Path, statements: list[str]) -> None:
    """After a full run, a refresh whose extracts write nothing sends the derive, the
    aggregate and the quality rules no stage; a change in the lookup table alone then
    makes all three work again, and the outputs equal a fresh full run's."""
    shop = sample_shop(tmp_path / "data")
    assert shop.run(warehouse, "full").status == "succeeded"
    before = outputs(warehouse)
    statements.clear()
    outcome = shop.run(warehouse, "refresh")
    assert outcome.status == "succeeded", outcome.error
    assert not [s for s in statements if DOWNSTREAM_STAGES.match(s)]
    assert outputs(warehouse) == before
    latest = _latest_run_ts(warehouse)
    with warehouse.engine.connect() as conn:  # each still consumed the run
        for processor, input_ in (("order_values", "customers"), ("by_seg", "orders"),
                                  ("order_checks", "orders")):
            assert get_watermark(conn, processor, input_).at == latest

    shop.put_customer("c9", "B")  # the unknown customer appears: only the lookup changed
    statements.clear()
    outcome = shop.run(warehouse, "refresh")
    assert outcome.status == "succeeded", outcome.error
    staged = {m.group(1) for s in statements if (m := DOWNSTREAM_STAGES.match(s))}
    assert staged == {"order_values", "by_seg", "order_checks"}
    assert outputs(warehouse) != before
    assert outputs(warehouse) == fresh_full_outputs(shop, warehouse, tmp_path)
