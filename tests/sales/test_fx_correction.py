"""A corrected fx rate re-derives exactly the sales of that currency and day.

After a nightly, one rate (one currency, one day) is corrected in shop.db with a later
``updated_at``; a refresh must re-derive ``rate_to_aud``/``amount_aud`` of exactly the
sales of that currency and day, rebuild exactly their ``daily_sales`` groups and
``customer_summary`` rows, and touch nothing else. Checked from the run's task history
and from the cell-level change log.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
from oracle import expected
from sales_support import (
    DIALECTS,
    dialect_url,
    differences,
    make_shop,
    outputs,
    run_ok,
    run_ts,
    write_sales,
)

from loader import Warehouse
from loader.changes import changes
from loader.history import task_runs
from loader.salesdata import Scale, generate

CORRECTED_AT = "2026-11-20 08:00:00"


def _busiest_foreign_day(data: Path) -> tuple[str, Any]:
    """The (currency, day) with a rate and the most sales of a currency other than AUD."""
    counts = Counter((r["currency"], r["sold_on"]) for r in expected(data).sales.values()
                     if r["currency"] != "AUD" and r["rate_to_aud"] is not None)
    (currency, day), _ = counts.most_common(1)[0]
    return currency, day


def _correct(data: Path, currency: str, day: Any) -> None:
    con = sqlite3.connect(data / "shop.db")
    try:
        updated = con.execute(
            "UPDATE fx_rates SET rate_to_aud = ROUND(rate_to_aud * 1.05, 6), updated_at = ? "
            "WHERE UPPER(currency) = ? AND day = ?", (CORRECTED_AT, currency, day.isoformat()))
        assert updated.rowcount == 1
        con.commit()
    finally:
        con.close()


def _cells(found: list[Any], key_names: tuple[str, ...]) -> set[tuple[Any, str]]:
    return {(tuple(c.key[k] for k in key_names), c.column) for c in found}


@pytest.mark.parametrize("dialect", DIALECTS)
def test_fx_correction_rederives_exactly_that_currency_and_day(dialect: str,
                                                                tmp_path: Path) -> None:
    """A corrected fx rate re-derives exactly the sales of that currency and day, and
    rebuilds only the daily_sales groups and customer_summary rows they belong to."""
    data = tmp_path / "data"
    generate(data, Scale.quick(seed=7))
    urls = dialect_url(dialect, tmp_path)
    wh = Warehouse(next(urls))
    try:
        run_ok(wh, "nightly", data)
        before = expected(data)
        currency, day = _busiest_foreign_day(data)
        _correct(data, currency, day)
        after = expected(data)
        touched = {k for k, r in after.sales.items()
                   if r["currency"] == currency and r["sold_on"] == day}
        moved = {k for k in touched
                 if after.sales[k]["amount_aud"] != before.sales[k]["amount_aud"]}
        assert len(touched) >= 3 and moved
        groups = {(after.sales[k]["sold_on"], k[0], after.sales[k]["category"]) for k in moved}
        customers = {after.sales[k]["customer_id"] for k in moved} - {None}

        report = run_ok(wh, "refresh", data)
        assert differences(outputs(wh), after) == []
        since = run_ts(wh, report.run_id)
        with wh.begin() as conn:
            tasks = {t["task"]: t for t in task_runs(conn, report.run_id)}
            sales_cells = _cells(changes(conn, "sales", since), ("region", "txn_id"))
            daily_cells = _cells(changes(conn, "daily_sales", since),
                                 ("sold_on", "region", "category"))
            summary_cells = _cells(changes(conn, "customer_summary", since), ("customer_id",))
            fx_cells = _cells(changes(conn, "fx_rates", since), ("currency", "day"))

        # the extract saw one corrected row
        assert fx_cells == {((currency, day), "rate_to_aud"), ((currency, day), "updated_at")}
        assert tasks["sales_files"]["rows_read"] == 0
        # exactly the sales of that currency and day were re-derived
        fx = tasks["sales_derived"]
        assert fx["rows_read"] == len(touched)
        assert fx["changes"] == {"sales.rate_to_aud": len(touched),
                                 "sales.amount_aud": len(moved)}
        assert sales_cells == ({(k, "rate_to_aud") for k in touched}
                               | {(k, "amount_aud") for k in moved})
        # exactly their aggregate groups were rebuilt
        assert tasks["daily_sales_groups"]["details"]["groups_rebuilt"] == len(groups)
        assert daily_cells == {(g, "revenue_aud") for g in groups}
        assert tasks["customer_summary_groups"]["details"]["groups_rebuilt"] == len(customers)
        assert summary_cells == {((c,), "revenue_aud") for c in customers}
        # and no finding opened or resolved
        quality = tasks["sales_quality"]["changes"]
        assert (quality.get("exceptions.opened", 0), quality.get("exceptions.resolved", 0)) \
            == (0, 0)
    finally:
        wh.dispose()
        urls.close()


def _moved(day: int, sku: str, quantity: int, txn: str) -> str:
    return f"{txn},2026-03-0{day}T12:00:00Z,S1,C1,{sku},{quantity},2.50,AUD"


@pytest.mark.parametrize("dialect", DIALECTS)
def test_moved_sale_rebuilds_the_groups_it_left_and_joined(dialect: str,
                                                            tmp_path: Path) -> None:
    """A sale moved to another day and product rebuilds exactly the daily_sales group it
    belonged to before (deleted once empty) and the one it belongs to now, and exactly
    its customer's customer_summary row."""
    data = tmp_path / "data"
    make_shop(data, [("C1", "retail"), ("C2", "vip")], [("P1", "Toys"), ("P2", "Books")])
    a3 = "A3,2026-03-02T12:00:00Z,S1,C2,P2,1,2.50,AUD"
    write_sales(data, "a", [_moved(1, "P1", 1, "A1"), _moved(1, "P1", 2, "A2"), a3])
    toys1, books2, books3 = ((date(2026, 3, 1), "a", "Toys"), (date(2026, 3, 2), "a", "Books"),
                             (date(2026, 3, 3), "a", "Books"))
    measures = {"txns", "units", "revenue_aud"}
    urls = dialect_url(dialect, tmp_path)
    wh = Warehouse(next(urls))
    try:
        run_ok(wh, "nightly", data)
        steps = [
            ([_moved(2, "P2", 1, "A1"), _moved(1, "P1", 2, "A2"), a3],
             {(g, m) for g in (toys1, books2) for m in measures}, {(("C1",), "last_sold_at")}),
            ([_moved(2, "P2", 1, "A1"), _moved(3, "P2", 2, "A2"), a3],
             {(toys1, "(deleted)")} | {(books3, m) for m in measures},
             {(("C1",), "first_sold_at"), (("C1",), "last_sold_at")}),
        ]
        for rows, daily_want, summary_want in steps:
            write_sales(data, "a", rows)
            report = run_ok(wh, "refresh", data)
            assert differences(outputs(wh), expected(data)) == []
            since = run_ts(wh, report.run_id)
            with wh.begin() as conn:
                tasks = {t["task"]: t for t in task_runs(conn, report.run_id)}
                daily = _cells(changes(conn, "daily_sales", since),
                               ("sold_on", "region", "category"))
                summary = _cells(changes(conn, "customer_summary", since), ("customer_id",))
            assert tasks["daily_sales_groups"]["details"]["groups_rebuilt"] == 2
            assert daily == daily_want
            assert tasks["customer_summary_groups"]["details"]["groups_rebuilt"] == 1
            assert summary == summary_want
        assert outputs(wh).customer_summary["C1"]["first_sold_at"] == datetime(2026, 3, 2, 12)
    finally:
        wh.dispose()
        urls.close()
