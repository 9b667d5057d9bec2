"""Stamps: each column remembers the run that last changed it, and nothing else moves it.

``<name>_tracked`` holds ``_changed_at_<col>`` per data column, ``_changed_at``
per row, ``_deleted_at`` for soft deletions and ``_live_since`` for revivals.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from loader import Warehouse

from .shop import assert_wrote_nothing, dump, run_ts, sample_shop, view

DATA = ("qty", "price", "cust", "total", "seg")


def _by_key(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["shop"], r["id"]): r for r in records}


def _moved(before: dict[str, Any], after: dict[str, Any]) -> set[str]:
    return {c for c in before if before[c] != after[c]}


@pytest.mark.parametrize(("column", "value", "moved"), [
    ("qty", "3", {"qty", "total"}),
    ("price", "4.00", {"price", "total"}),
    ("cust", "c3", {"cust"}),
    ("cust", "c2", {"cust", "seg"}),
], ids=["qty", "price", "cust_same_segment", "cust_other_segment"])
def test_changing_one_column_moves_only_the_stamps_of_what_changed(
        warehouse: Warehouse, tmp_path: Path, column: str, value: str,
        moved: set[str]) -> None:
    """Changing one column of one row moves that column's stamp, ``_changed_at`` and the
    stamps of the derived columns whose value really changed, for that row only: a new
    price moves ``total``; a customer of the same segment moves ``cust`` but not ``seg``.
    Every other row keeps every value and stamp."""
    shop = sample_shop(tmp_path / "data")
    assert shop.run(warehouse, "full").status == "succeeded"
    before = dump(warehouse)
    shop.orders["east"]["1"][column] = value
    shop.write_orders("east")
    outcome = shop.run(warehouse, "refresh")
    assert outcome.status == "succeeded", outcome.error
    now = run_ts(warehouse, outcome.run_id)
    after = dump(warehouse)

    old, new = _by_key(before["orders_tracked"]), _by_key(after["orders_tracked"])
    assert old.keys() == new.keys()
    for key in old:
        if key != ("east", "1"):
            assert new[key] == old[key], key
    row_before, row_after = old["east", "1"], new["east", "1"]
    stamps = {f"_changed_at_{c}" for c in moved}
    assert _moved(row_before, row_after) == moved | stamps | {"_changed_at", "_row_hash"}
    for name in stamps | {"_changed_at"}:
        assert row_after[name] == now, name
    for name in set(DATA) - moved:
        assert row_after[f"_changed_at_{name}"] == row_before[f"_changed_at_{name}"] < now
    assert row_after["_live_since"] == row_before["_live_since"]
    assert row_after["_deleted_at"] is None
    assert outcome.results["order_values"].changes == {
        f"orders.{c}": 1 for c in moved if c in ("total", "seg")}


def test_a_new_quantity_moves_only_its_group_revenue_stamp(warehouse: Warehouse,
                                                           tmp_path: Path) -> None:
    """A new quantity changes the revenue of the order's segment: that group's
    ``revenue`` stamp moves, its ``n`` stamp and every other group stay."""
    shop = sample_shop(tmp_path / "data")
    assert shop.run(warehouse, "full").status == "succeeded"
    before = {r["seg"]: r for r in dump(warehouse)["seg_totals_tracked"]}
    shop.orders["east"]["1"]["qty"] = "7"
    shop.write_orders("east")
    outcome = shop.run(warehouse, "refresh")
    assert outcome.status == "succeeded", outcome.error
    now = run_ts(warehouse, outcome.run_id)
    after = {r["seg"]: r for r in dump(warehouse)["seg_totals_tracked"]}
    assert after.keys() == before.keys() == {"A", "B", None}
    assert after["B"] == before["B"]
    assert after[None] == before[None]
    assert _moved(before["A"], after["A"]) == {"revenue", "_changed_at_revenue", "_changed_at"}
    assert after["A"]["_changed_at_revenue"] == after["A"]["_changed_at"] == now
    assert after["A"]["revenue"] == before["A"]["revenue"] + Decimal("17.5")


def test_a_full_run_over_a_correct_warehouse_writes_nothing(warehouse: Warehouse,
                                                            tmp_path: Path) -> None:
    """A full run over a warehouse that is already right moves no stamp, changes no
    row of any tracked table, membership table or ``exceptions``, and every task
    reports nothing inserted, updated or deleted."""
    shop = sample_shop(tmp_path / "data")
    assert shop.run(warehouse, "full").status == "succeeded"
    shop.orders["west"]["1"]["price"] = "2.50"
    shop.write_orders("west")
    shop.put_customer("c3", "B")
    assert shop.run(warehouse, "refresh").status == "succeeded"
    before = dump(warehouse)
    assert before.keys() >= {"orders_tracked", "customers_tracked", "seg_totals_tracked",
                             "_members_seg_totals", "exceptions"}
    outcome = shop.run(warehouse, "full")
    assert_wrote_nothing(outcome)
    assert set(outcome.results) == {"orders_csv", "customers_db", "order_values", "by_seg",
                                    "order_checks"}
    assert dump(warehouse) == before


def test_a_refresh_without_source_change_writes_nothing(warehouse: Warehouse,
                                                        tmp_path: Path) -> None:
    """A refresh when no source changed writes nothing and moves no stamp."""
    shop = sample_shop(tmp_path / "data")
    assert shop.run(warehouse, "full").status == "succeeded"
    shop.orders["east"]["2"]["cust"] = "c1"
    shop.write_orders("east")
    assert shop.run(warehouse, "refresh").status == "succeeded"
    before = dump(warehouse)
    outcome = shop.run(warehouse, "refresh")
    assert_wrote_nothing(outcome)
    assert outcome.results["orders_csv"].details["unchanged"] == ["orders_east.csv",
                                                                 "orders_west.csv"]
    assert dump(warehouse) == before


def test_soft_deleted_rows_leave_the_view_and_a_returning_key_is_revived(
        warehouse: Warehouse, tmp_path: Path) -> None:
    """A row gone from its file disappears from the view but stays in ``orders_tracked``
    with ``_deleted_at`` (and ``_changed_at``) set to the run; when its key returns the
    same row is revived: ``_deleted_at`` is NULL again, ``_live_since`` and the stamps of
    the loaded columns (and of ``total``, whose value changed) are the reviving run's."""
    shop = sample_shop(tmp_path / "data")
    first = shop.run(warehouse, "full")
    assert first.status == "succeeded"
    removed = shop.orders["east"].pop("2")
    shop.write_orders("east")
    deleting = shop.run(warehouse, "refresh")
    assert deleting.status == "succeeded", deleting.error
    assert deleting.results["orders_csv"].deleted == 1
    deleted_at = run_ts(warehouse, deleting.run_id)

    assert ("east", "2") not in _by_key(view(warehouse, "orders"))
    tracked = _by_key(dump(warehouse)["orders_tracked"])
    gone = tracked["east", "2"]
    assert gone["_deleted_at"] == gone["_changed_at"] == deleted_at
    assert (gone["qty"], gone["price"], gone["cust"], gone["seg"]) == (1, 10, "c2", "B")
    assert gone["_live_since"] == run_ts(warehouse, first.run_id)
    assert all(r["_deleted_at"] is None for k, r in tracked.items() if k != ("east", "2"))

    shop.orders["east"]["2"] = {**removed, "qty": "6"}
    shop.write_orders("east")
    reviving = shop.run(warehouse, "refresh")
    assert reviving.status == "succeeded", reviving.error
    revived_at = run_ts(warehouse, reviving.run_id)
    rows = [r for r in dump(warehouse)["orders_tracked"] if (r["shop"], r["id"]) == ("east", "2")]
    assert len(rows) == 1
    back = rows[0]
    assert back["_deleted_at"] is None
    assert back["_live_since"] == back["_changed_at"] == revived_at
    for name in ("qty", "price", "cust", "total"):
        assert back[f"_changed_at_{name}"] == revived_at, name
    assert _by_key(view(warehouse, "orders"))["east", "2"] == {
        "shop": "east", "id": "2", "qty": 6, "price": 10, "cust": "c2", "total": 60, "seg": "B"}


def test_a_revived_or_new_row_stamps_every_column(warehouse: Warehouse,
                                                  tmp_path: Path) -> None:
    """As documented in ``loader/tracking.py`` and ``merge.upsert``: a new row stamps
    every column and a revived row is revived with every column stamped, derived
    columns included (``seg`` of a revived order whose segment is the same as before,
    ``seg`` of a new order of an unknown customer, which is NULL)."""
    shop = sample_shop(tmp_path / "data")
    assert shop.run(warehouse, "full").status == "succeeded"
    removed = shop.orders["east"].pop("2")
    shop.write_orders("east")
    assert shop.run(warehouse, "refresh").status == "succeeded"
    shop.orders["east"]["2"] = removed
    shop.put_order("west", "9", 1, "1.00", "c9")
    shop.write_orders("east")
    shop.write_orders("west")
    outcome = shop.run(warehouse, "refresh")
    assert outcome.status == "succeeded", outcome.error
    now = run_ts(warehouse, outcome.run_id)
    rows = _by_key(dump(warehouse)["orders_tracked"])
    for key in (("east", "2"), ("west", "9")):
        assert rows[key]["_live_since"] == now
        assert {c: rows[key][f"_changed_at_{c}"] for c in DATA} == dict.fromkeys(DATA, now)
