"""Aggregate: a refresh rebuilds exactly the groups its changed rows touch.

``seg_totals`` counts orders and sums their ``total`` by the customer's segment;
``_members_seg_totals`` remembers each order's group so that the group an order
leaves is rebuilt too, and a group left empty is soft-deleted.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from loader import Aggregate, Warehouse, count
from loader.execute import RunOutcome

from .shop import (
    Shop,
    dump,
    flow,
    fresh_full_outputs,
    fresh_warehouse,
    outputs,
    sample_shop,
    view,
)


def totals(wh: Warehouse) -> dict[str | None, tuple[int, Decimal]]:
    return {r["seg"]: (r["n"], r["revenue"]) for r in view(wh, "seg_totals")}


def groups(wh: Warehouse) -> dict[str | None, dict[str, Any]]:
    return {r["seg"]: r for r in dump(wh)["seg_totals_tracked"]}


def rebuilt(outcome: RunOutcome) -> int:
    return rebuilt_groups(outcome, "by_seg")


def rebuilt_groups(outcome: RunOutcome, task: str) -> int:
    assert outcome.status == "succeeded", outcome.error
    return int(outcome.results[task].details.get("groups_rebuilt", 0))


def _shop(tmp_path: Path) -> Shop:
    """Groups A (east:1, west:1), B (east:2, west:2), C (west:3) and NULL (east:3)."""
    shop = sample_shop(tmp_path / "data")
    shop.put_customer("c4", "C")
    shop.put_order("west", "3", 1, "5.00", "c4")
    shop.write_orders("west")
    return shop


def test_a_refresh_rebuilds_only_the_groups_of_changed_rows(warehouse: Warehouse,
                                                            tmp_path: Path) -> None:
    """Changing one order's quantity rebuilds its group only; the other groups keep
    their rows and stamps untouched. A refresh with nothing changed rebuilds none."""
    shop = _shop(tmp_path)
    assert rebuilt(shop.run(warehouse, "full")) == 4
    assert totals(warehouse) == {"A": (2, Decimal(17)), "B": (2, Decimal("10.3")),
                                 "C": (1, Decimal(5)), None: (1, Decimal(5))}
    before = groups(warehouse)
    assert rebuilt(shop.run(warehouse, "refresh")) == 0

    shop.orders["east"]["1"]["qty"] = "4"
    shop.write_orders("east")
    assert rebuilt(shop.run(warehouse, "refresh")) == 1
    after = groups(warehouse)
    assert {seg for seg in before if after[seg] != before[seg]} == {"A"}
    assert totals(warehouse)["A"] == (2, Decimal(24))


def test_a_row_moving_between_groups_rebuilds_both_and_an_empty_group_vanishes(
        warehouse: Warehouse, tmp_path: Path) -> None:
    """An order moving to another segment rebuilds the group it left and the one it
    joined; when the group it left is now empty, the group disappears from the view
    and is kept soft-deleted in ``seg_totals_tracked``; it comes back when a row does."""
    shop = _shop(tmp_path)
    assert rebuilt(shop.run(warehouse, "full")) == 4

    shop.orders["west"]["1"]["cust"] = "c2"
    shop.write_orders("west")
    assert rebuilt(shop.run(warehouse, "refresh")) == 2
    assert totals(warehouse) == {"A": (1, Decimal(7)), "B": (3, Decimal("20.3")),
                                 "C": (1, Decimal(5)), None: (1, Decimal(5))}

    shop.orders["west"]["3"]["cust"] = "c1"
    shop.write_orders("west")
    assert rebuilt(shop.run(warehouse, "refresh")) == 2
    assert totals(warehouse) == {"A": (2, Decimal(12)), "B": (3, Decimal("20.3")),
                                 None: (1, Decimal(5))}
    c = groups(warehouse)["C"]
    assert c["_deleted_at"] is not None and c["n"] == 1

    shop.put_customer("c4", "A")
    shop.orders["east"]["1"]["cust"] = "c4"
    shop.orders["west"]["3"]["cust"] = "c4"
    shop.write_orders("east")
    shop.write_orders("west")
    assert rebuilt(shop.run(warehouse, "refresh")) == 0  # same segment: no group touched
    shop.put_customer("c4", "C")
    assert rebuilt(shop.run(warehouse, "refresh")) == 2
    assert totals(warehouse) == {"B": (3, Decimal("20.3")), "C": (2, Decimal(12)),
                                 None: (1, Decimal(5))}
    assert groups(warehouse)["C"]["_deleted_at"] is None
    assert groups(warehouse)["A"]["_deleted_at"] is not None
    assert outputs(warehouse) == fresh_full_outputs(shop, warehouse, tmp_path)


def test_only_a_refresh_that_empties_a_group_deletes_in_the_target(
        warehouse: Warehouse, tmp_path: Path, statements: list[str]) -> None:
    """The emptied groups are found among the staged groups first: a refresh that
    empties none sends the target no deleting UPDATE; one that empties the NULL group
    deletes that group alone."""
    shop = _shop(tmp_path)
    assert rebuilt(shop.run(warehouse, "full")) == 4
    deleting = re.compile(r"UPDATE seg_totals_tracked SET _changed_at=")
    statements.clear()
    shop.orders["west"]["1"]["cust"] = "c2"  # A loses a row, B gains it: none empties
    shop.write_orders("west")
    outcome = shop.run(warehouse, "refresh")
    assert rebuilt(outcome) == 2 and outcome.results["by_seg"].deleted == 0
    assert not [s for s in statements if deleting.match(s)]
    shop.orders["east"]["3"]["cust"] = "c1"  # the one NULL-segment order joins A
    shop.write_orders("east")
    outcome = shop.run(warehouse, "refresh")
    assert rebuilt(outcome) == 2 and outcome.results["by_seg"].deleted == 1
    assert len([s for s in statements if deleting.match(s)]) == 1
    assert None not in totals(warehouse)
    assert groups(warehouse)[None]["_deleted_at"] is not None
    assert outputs(warehouse) == fresh_full_outputs(shop, warehouse, tmp_path)


def test_a_deleted_row_rebuilds_its_group(warehouse: Warehouse, tmp_path: Path) -> None:
    """An order gone from its file rebuilds the group it was in; the membership table
    forgets it."""
    shop = _shop(tmp_path)
    assert rebuilt(shop.run(warehouse, "full")) == 4
    del shop.orders["west"]["2"]
    shop.write_orders("west")
    assert rebuilt(shop.run(warehouse, "refresh")) == 1
    assert totals(warehouse)["B"] == (1, Decimal(10))
    members = {(r["shop"], r["id"]): r["g_seg"] for r in dump(warehouse)["_members_seg_totals"]}
    assert members == {("east", "1"): "A", ("east", "2"): "B", ("east", "3"): None,
                       ("west", "1"): "A", ("west", "3"): "C"}


def test_null_group_values_form_their_own_group(warehouse: Warehouse,
                                                tmp_path: Path) -> None:
    """Orders without a segment (unknown customer, no customer, customer without a
    segment) form one NULL group, rebuilt like any other, which vanishes when empty
    and comes back when a row joins it again."""
    shop = _shop(tmp_path)
    shop.put_order("east", "4", 2, "1.50", None)
    shop.write_orders("east")
    assert rebuilt(shop.run(warehouse, "full")) == 4
    assert totals(warehouse)[None] == (2, Decimal(8))

    shop.put_customer("c5", None)
    shop.orders["west"]["1"]["cust"] = "c5"
    shop.write_orders("west")
    assert rebuilt(shop.run(warehouse, "refresh")) == 2
    assert totals(warehouse)[None] == (3, Decimal(18))
    assert totals(warehouse)["A"] == (1, Decimal(7))

    shop.put_customer("c9", "B")
    shop.put_customer("c5", "B")
    shop.orders["east"]["4"]["cust"] = "c2"
    shop.write_orders("east")
    assert rebuilt(shop.run(warehouse, "refresh")) == 2
    assert None not in totals(warehouse)
    assert totals(warehouse)["B"] == (5, Decimal("28.3"))
    assert groups(warehouse)[None]["_deleted_at"] is not None

    shop.orders["east"]["4"]["cust"] = ""
    shop.write_orders("east")
    assert rebuilt(shop.run(warehouse, "refresh")) == 2
    assert totals(warehouse)[None] == (1, Decimal(3))
    assert len([r for r in dump(warehouse)["seg_totals_tracked"] if r["seg"] is None]) == 1
    assert outputs(warehouse) == fresh_full_outputs(shop, warehouse, tmp_path)


def test_group_keys_are_indexed_for_the_dialects_way_of_matching_them(
        warehouse: Warehouse, tmp_path: Path) -> None:
    """Groups may be NULL: PostgreSQL matches them coalesced to a sentinel, and gets an
    index on exactly that expression (a NULL group found through it); SQLite matches
    with ``IS`` through the plain index."""
    import sqlalchemy as sa

    from loader.tracking import null_safe_key

    shop = _shop(tmp_path)
    shop.put_order("east", "4", 2, "1.50", None)
    shop.write_orders("east")
    assert rebuilt(shop.run(warehouse, "full")) == 4
    with warehouse.begin() as conn:
        names = {ix["name"] for ix in sa.inspect(conn).get_indexes("seg_totals_tracked")}
        if conn.dialect.name == "postgresql":
            assert {"ix_seg_totals_key", "ix_seg_totals_keyc"} <= names
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            t = sa.table("seg_totals_tracked", sa.column("seg"))
            query = sa.select(sa.func.count()).select_from(t).where(
                null_safe_key(t.c.seg, "text") == null_safe_key(sa.null(), "text"))
            plan = "\n".join(conn.execute(sa.text("EXPLAIN " + str(query.compile(
                dialect=conn.dialect, compile_kwargs={"literal_binds": True})))).scalars())
            assert "ix_seg_totals_keyc" in plan
            assert conn.execute(query).scalar_one() == 1
        else:
            assert "ix_seg_totals_key" in names and "ix_seg_totals_keyc" not in names


def test_a_full_rebuild_reports_the_source_rows_that_count(warehouse: Warehouse,
                                                           tmp_path: Path) -> None:
    """A full rebuild's ``rows_read`` is the number of live source rows that count:
    every live order by segment, only those with a customer by customer. So on the
    first build, over a correct warehouse, and after an order is deleted and another
    loses its customer."""
    shop = _shop(tmp_path)
    shop.put_order("west", "4", 1, "1.00", None)
    shop.write_orders("west")
    by_cust = Aggregate("by_cust", "orders", "cust_totals", ("cust",), (count("n"),),
                        not_null=("cust",))

    def full() -> tuple[int, int]:
        outcome = shop.run(warehouse, "full", [*flow(), by_cust])
        assert outcome.status == "succeeded", outcome.error
        return (outcome.results["by_seg"].rows_read, outcome.results["by_cust"].rows_read)

    def counted() -> tuple[int, int]:
        live = view(warehouse, "orders")
        return len(live), sum(1 for r in live if r["cust"] is not None)

    assert full() == counted() == (7, 6)
    assert full() == counted()
    del shop.orders["east"]["2"]
    shop.orders["east"]["1"]["cust"] = ""
    shop.write_orders("east")
    assert full() == counted() == (6, 4)


def test_a_full_rebuild_writes_only_what_changed(warehouse: Warehouse, tmp_path: Path,
                                                 statements: list[str]) -> None:
    """A full rebuild over a correct warehouse writes neither the groups nor the
    membership. After an order moves, one goes and one comes, it writes both, and the
    membership names each live order's group."""
    shop = _shop(tmp_path)
    assert rebuilt(shop.run(warehouse, "full")) == 4
    writes = re.compile(r"(UPDATE|DELETE FROM|INSERT INTO) (seg_totals_tracked|_members_)")
    statements.clear()
    outcome = shop.run(warehouse, "full")
    assert rebuilt(outcome) == 4
    assert (outcome.results["by_seg"].updated, outcome.results["by_seg"].deleted) == (0, 0)
    assert not [s for s in statements if writes.match(s)]

    shop.orders["west"]["1"]["cust"] = "c2"  # from A to B
    del shop.orders["east"]["2"]  # leaves B
    shop.put_order("east", "4", 2, "1.50", "c4")  # joins C
    shop.write_orders("east")
    shop.write_orders("west")
    outcome = shop.run(warehouse, "full")
    assert outcome.status == "succeeded", outcome.error
    assert [s for s in statements if writes.match(s)]
    members = {(r["shop"], r["id"]): r["g_seg"] for r in dump(warehouse)["_members_seg_totals"]}
    assert members == {("east", "1"): "A", ("east", "3"): None, ("east", "4"): "C",
                       ("west", "1"): "B", ("west", "2"): "B", ("west", "3"): "C"}
    assert outputs(warehouse) == fresh_full_outputs(shop, warehouse, tmp_path)


@pytest.mark.postgres
def test_a_refresh_touching_many_groups_reads_them_in_one_scan(pg_url: str,
                                                               tmp_path: Path) -> None:
    """On PostgreSQL a refresh that touches an eighth of the groups or more reads their
    rows with the planner kept to scans; one that touches fewer looks them up. Both
    leave what a full run over the same files leaves."""
    shop = Shop(tmp_path / "data")
    for i in range(40):
        shop.put_order("east", str(i), 1, "1.00", f"c{i:02}")
    shop.write_orders("east")
    shop.write_orders("west")
    by_cust = Aggregate("by_cust", "orders", "cust_totals", ("cust",), (count("n"),),
                        not_null=("cust",))
    processors = [*flow(), by_cust]
    scans = re.compile(r"SET LOCAL enable_nestloop = off")
    sent: list[str] = []
    wh = Warehouse(pg_url)
    sa.event.listen(wh.engine, "before_cursor_execute",
                    lambda conn, cursor, statement, *args: sent.append(statement))
    try:
        assert shop.run(wh, "full", processors).status == "succeeded"
        shop.orders["east"]["0"]["cust"] = "c01"  # touches c00 and c01 of 40: 5%
        shop.write_orders("east")
        assert rebuilt_groups(shop.run(wh, "refresh", processors), "by_cust") == 2
        assert not [s for s in sent if scans.match(s)]
        for i in range(10, 20):  # touches c10 to c20: 11 of 40
            shop.orders["east"][str(i)]["cust"] = f"c{i + 1:02}"
        shop.write_orders("east")
        assert rebuilt_groups(shop.run(wh, "refresh", processors), "by_cust") == 11
        assert len([s for s in sent if scans.match(s)]) == 1
        with fresh_warehouse(wh, tmp_path) as fresh:
            assert shop.run(fresh, "full", processors).status == "succeeded"
            assert view(wh, "cust_totals") == view(fresh, "cust_totals")
    finally:
        wh.dispose()


@pytest.mark.postgres
def test_scans_only_hold_for_their_block(pg_url: str) -> None:
    """The planner settings of a block planned as scans alone are the session's again
    after it, whatever they were."""
    from loader.bulk import postgresql as pg_bulk

    wh = Warehouse(pg_url)
    names = ("random_page_cost", "enable_nestloop", "enable_indexscan")

    def shown(conn: sa.Connection) -> tuple[str, ...]:
        return tuple(conn.exec_driver_sql(f"SHOW {n}").scalar_one() for n in names)

    try:
        with wh.begin() as conn:
            conn.exec_driver_sql("SET LOCAL enable_indexscan = off")
            before = shown(conn)
            with pg_bulk.planned_as_scans(conn, only=True):
                assert shown(conn) == ("4", "off", "off")
            assert shown(conn) == before == ("1.1", "on", "off")
    finally:
        wh.dispose()
