"""A processor's version: changing it re-derives its outputs for every row, and nothing else."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from pathlib import Path
from typing import Any

from loader import Warehouse

from .shop import dump, flow, sample_shop, view


def _doubled(row: Any) -> dict[str, Any]:
    return {"total": row["qty"] * row["price"] * 2, "seg": row["c.seg"]}


def test_a_new_version_rederives_every_row_and_nothing_else(warehouse: Warehouse,
                                                            tmp_path: Path) -> None:
    """With the logic changed and the version bumped, a refresh without any source
    change recomputes every row's outputs, writes the ones whose value changed, and
    rebuilds the aggregate from them; the inputs keep their stamps."""
    shop = sample_shop(tmp_path / "data")
    first = shop.run(warehouse, "full")
    assert first.status == "succeeded", first.error
    before = {(r["shop"], r["id"]): r for r in dump(warehouse)["orders_tracked"]}

    processors = flow()
    processors[2] = dataclasses.replace(processors[2], compute=_doubled, version="2")
    second = shop.run(warehouse, "refresh", processors)
    assert second.status == "succeeded", second.error

    derive = second.results["order_values"]
    assert derive.details["mode"] == "all rows"
    assert derive.rows_read == len(before)
    assert derive.changes == {"orders.total": len(before)}
    after = {(r["shop"], r["id"]): r for r in dump(warehouse)["orders_tracked"]}
    for key, row in after.items():
        assert row["total"] == before[key]["total"] * 2
        assert row["_changed_at_total"] > before[key]["_changed_at_total"]
        for column in ("qty", "price", "cust", "seg"):
            assert row[f"_changed_at_{column}"] == before[key][f"_changed_at_{column}"]
    totals = {r["seg"]: r["revenue"] for r in view(warehouse, "seg_totals")}
    assert totals == {"A": Decimal("34.00"), "B": Decimal("20.60"), None: Decimal("10.00")}

    third = shop.run(warehouse, "refresh", processors)
    assert third.results["order_values"].details["mode"] == "incremental"
    assert third.results["order_values"].rows_read == 0
