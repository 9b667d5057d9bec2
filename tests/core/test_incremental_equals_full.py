"""A refresh of a warehouse kept up to date incrementally shows exactly what a
from-scratch full run over the same source files shows.

A Hypothesis state machine edits the sources of the shop warehouse (orders CSV
files of two shops, a customers database read by cursor) and, now and then,
refreshes the warehouse and compares its views and open findings with those of
a fresh warehouse built by one full run, and with a model of the sources.
Customer deletions are only seen by full runs, so deleting a customer is
followed by a full run (of the whole flow, or of the customers extract alone and
then a refresh of the rest). The quality rule runs in SQL in one of the two
warehouses and in Python in the other, drawn once per example.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import PG_URL, pg_schema_url
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from loader import Warehouse, run_sequence

from .shop import Shop, customers_extract, flow, norm, outputs, view

SHOPS = ("east", "west")
CUSTOMERS = ("c1", "c2", "c3", "c4", "c5")
UNKNOWN = "c9"
SEGMENTS = ("A", "B", "C")
EXTRAS = ("note", "tag")

qtys = st.integers(min_value=0, max_value=30)
prices = st.integers(min_value=0, max_value=99_999).map(lambda c: f"{c // 100}.{c % 100:02d}")
segs = st.one_of(st.sampled_from(SEGMENTS), st.none())
order_custs = st.one_of(st.sampled_from((*CUSTOMERS, UNKNOWN)), st.none())


_TEMPLATE: list[Path] = []


def _sqlite_template() -> Path:
    """An empty, migrated SQLite warehouse file, made once, copied for each fresh run."""
    if not _TEMPLATE:
        directory = tempfile.mkdtemp(prefix="loader-template-")
        atexit.register(shutil.rmtree, directory, True)
        path = Path(directory) / "empty.db"
        Warehouse(f"sqlite:///{path}").dispose()
        assert not path.with_name("empty.db-wal").exists()
        _TEMPLATE.append(path)
    return _TEMPLATE[0]


class ShopMachine(RuleBasedStateMachine):
    """Edits the shop's sources; every refresh must agree with a fresh full run."""

    dialect = "sqlite"

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="loader-inc-"))
        self.schemas: list[Iterator[str]] = []
        self.fresh_runs = 0
        self.shop = Shop(self.tmp / "data")
        self.next_id = dict.fromkeys(SHOPS, 1)
        self.url = self._new_url("incremental")
        self.fresh_url = self._new_url("fresh")
        self.wh = Warehouse(self.url)
        self.sql_rules = False

    # --- plumbing ---------------------------------------------------------------------

    def _new_url(self, name: str) -> str:
        if self.dialect == "sqlite":
            return f"sqlite:///{self.tmp}/{name}.db"
        schema = pg_schema_url()
        self.schemas.append(schema)
        return next(schema)

    def _fresh_warehouse(self) -> Warehouse:
        """An empty, migrated warehouse that has never seen a run."""
        self.fresh_runs += 1
        if self.dialect == "sqlite":
            path = self.tmp / f"fresh{self.fresh_runs}.db"
            shutil.copyfile(_sqlite_template(), path)
            return Warehouse(f"sqlite:///{path}")
        schema = self.fresh_url.rsplit("%3D", 1)[1]
        admin = sa.create_engine(PG_URL)
        try:
            with admin.begin() as conn:
                conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
                conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        finally:
            admin.dispose()
        return Warehouse(self.fresh_url)

    def teardown(self) -> None:
        self.wh.dispose()
        for schema in self.schemas:
            schema.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def run(self, mode: str) -> None:
        outcome = self.shop.run(self.wh, mode, flow(sql_rules=self.sql_rules))
        assert outcome.status == "succeeded", outcome.error
        expected_mode = "all rows" if mode == "full" else "incremental"
        assert outcome.results["order_values"].details["mode"] == expected_mode

    def compare_with_fresh_full_run(self) -> None:
        fresh = self._fresh_warehouse()
        try:
            outcome = self.shop.run(fresh, "full", flow(sql_rules=not self.sql_rules))
            assert outcome.status == "succeeded", outcome.error
            expected = outputs(fresh)
            expected["members"] = view(fresh, "_members_seg_totals")
        finally:
            fresh.dispose()
        actual = outputs(self.wh)
        # Which group each order counts in, kept row by row by refreshes, is what a
        # full build records.
        actual["members"] = view(self.wh, "_members_seg_totals")
        for name in expected:
            assert actual[name] == expected[name], name

    def _order(self, data: Any, shop: str | None = None) -> tuple[str, str, dict[str, str]]:
        shops = [shop] if shop else [s for s in SHOPS if self.shop.orders.get(s)]
        shop = data.draw(st.sampled_from(shops), label="shop")
        id_ = data.draw(st.sampled_from(sorted(self.shop.orders[shop])), label="id")
        return shop, id_, self.shop.orders[shop][id_]

    def has_orders(self) -> bool:
        return any(self.shop.orders.get(s) for s in SHOPS)

    def seg_of_order(self, row: dict[str, str]) -> str | None:
        found = self.shop.customers.get(row["cust"])
        return found[0] if found else None

    # --- rules ------------------------------------------------------------------------

    @initialize(
        customers=st.dictionaries(st.sampled_from(CUSTOMERS), segs, min_size=1, max_size=3),
        orders=st.lists(st.tuples(st.sampled_from(SHOPS), qtys, prices, order_custs),
                        max_size=6),
        sql_rules=st.booleans(),
    )
    def start(self, customers: dict[str, str | None],
              orders: list[tuple[str, int, str, str | None]], sql_rules: bool) -> None:
        self.sql_rules = sql_rules
        for cust, seg in sorted(customers.items()):
            self.shop.put_customer(cust, seg)
        for shop, qty, price, cust in orders:
            self._insert(shop, qty, price, cust)
        for shop in SHOPS:
            self.shop.write_orders(shop)
        self.run("full")

    def _insert(self, shop: str, qty: int, price: str, cust: str | None,
                extra: str = "") -> None:
        id_ = str(self.next_id[shop])
        self.next_id[shop] += 1
        values = dict.fromkeys(self.shop.extras.get(shop, []), extra)
        self.shop.put_order(shop, id_, qty, price, cust, **values)

    @rule(shop=st.sampled_from(SHOPS), qty=qtys, price=prices, cust=order_custs,
          extra=st.sampled_from(("", "x", "y")))
    def insert_order(self, shop: str, qty: int, price: str, cust: str | None,
                     extra: str) -> None:
        self._insert(shop, qty, price, cust, extra)
        self.shop.write_orders(shop)

    @precondition(has_orders)
    @rule(data=st.data(), qty=qtys)
    def update_qty(self, data: Any, qty: int) -> None:
        shop, _, row = self._order(data)
        row["qty"] = str(qty)
        self.shop.write_orders(shop)

    @precondition(has_orders)
    @rule(data=st.data(), price=prices)
    def update_price(self, data: Any, price: str) -> None:
        shop, _, row = self._order(data)
        row["price"] = price
        self.shop.write_orders(shop)

    @precondition(has_orders)
    @rule(data=st.data(), cust=order_custs)
    def update_cust(self, data: Any, cust: str | None) -> None:
        shop, _, row = self._order(data)
        row["cust"] = cust or ""
        self.shop.write_orders(shop)

    @precondition(has_orders)
    @rule(data=st.data())
    def change_group(self, data: Any) -> None:
        """Point an order at a customer of another segment (or at none)."""
        shop, _, row = self._order(data)
        current = self.seg_of_order(row)
        others = sorted(c for c, (seg, _) in self.shop.customers.items() if seg != current)
        choices = others + ([""] if current is not None else [])
        if choices:
            row["cust"] = data.draw(st.sampled_from(choices), label="new cust")
            self.shop.write_orders(shop)

    @precondition(has_orders)
    @rule(data=st.data())
    def delete_order(self, data: Any) -> None:
        shop, id_, _ = self._order(data)
        del self.shop.orders[shop][id_]
        self.shop.write_orders(shop)

    @precondition(lambda self: any(s in self.shop.extras for s in SHOPS))
    @rule(data=st.data(), value=st.sampled_from(("", "p", "q")))
    def update_extra(self, data: Any, value: str) -> None:
        shops = [s for s in SHOPS if self.shop.extras.get(s) and self.shop.orders.get(s)]
        if not shops:
            return
        shop, _, row = self._order(data, data.draw(st.sampled_from(shops), label="shop"))
        row[data.draw(st.sampled_from(self.shop.extras[shop]), label="extra")] = value
        self.shop.write_orders(shop)

    @rule(shop=st.sampled_from(SHOPS), name=st.sampled_from(EXTRAS))
    def add_extra_column(self, shop: str, name: str) -> None:
        """Schema evolution: one file gains a column, filled for every one of its rows."""
        known = self.shop.extras.setdefault(shop, [])
        if name in known:
            return
        known.append(name)
        for id_, row in self.shop.orders.get(shop, {}).items():
            row[name] = f"{name}-{shop}-{id_}"
        self.shop.write_orders(shop)

    @rule(cust=st.sampled_from(CUSTOMERS), seg=segs)
    def insert_customer(self, cust: str, seg: str | None) -> None:
        if cust not in self.shop.customers:
            self.shop.put_customer(cust, seg)

    @precondition(lambda self: bool(self.shop.customers))
    @rule(data=st.data(), seg=segs)
    def update_customer_seg(self, data: Any, seg: str | None) -> None:
        cust = data.draw(st.sampled_from(sorted(self.shop.customers)), label="cust")
        self.shop.put_customer(cust, seg)

    @precondition(lambda self: bool(self.shop.customers))
    @rule(data=st.data(), whole_flow=st.booleans())
    def delete_customer(self, data: Any, whole_flow: bool) -> None:
        """Only a full run sees a row gone from a cursor source: either a full run of the
        whole flow, or a full run of the customers extract alone followed by a refresh,
        which must carry the deletion to the derived columns, groups and findings."""
        cust = data.draw(st.sampled_from(sorted(self.shop.customers)), label="cust")
        self.shop.delete_customer(cust)
        if whole_flow:
            self.run("full")
        else:
            outcome = run_sequence(self.wh, [customers_extract()], mode="full",
                                   params=self.shop.params)
            assert outcome.status == "succeeded", outcome.error
            self.run("refresh")
        self.check_against_model()
        self.compare_with_fresh_full_run()

    @rule()
    def refresh(self) -> None:
        """A refresh agrees with the model and with a from-scratch full run."""
        self.run("refresh")
        self.check_against_model()
        self.compare_with_fresh_full_run()

    @rule()
    def full_run(self) -> None:
        """A full run over the incrementally kept warehouse agrees with a fresh one."""
        self.run("full")
        self.check_against_model()
        self.compare_with_fresh_full_run()

    def check_against_model(self) -> None:
        """The orders view holds the files' rows with their derived values; an extra
        column shows its file's values and NULL for the rows of the other file."""
        extras = sorted({e for s in SHOPS for e in self.shop.extras.get(s, [])})
        expected = []
        for shop in SHOPS:
            for id_, row in self.shop.orders.get(shop, {}).items():
                price = Decimal(row["price"])
                cust = row["cust"] or None
                record = {"shop": shop, "id": id_, "qty": int(row["qty"]),
                          "price": norm(price), "cust": cust,
                          "total": norm(int(row["qty"]) * price),
                          "seg": self.seg_of_order(row)}
                for name in extras:
                    record[name] = row.get(name) or None
                expected.append(record)
        actual = view(self.wh, "orders")
        by_key = {(r["shop"], r["id"]): r for r in actual}
        assert len(by_key) == len(actual)
        assert by_key == {(r["shop"], r["id"]): r for r in expected}
        totals: dict[str | None, list[Any]] = {}
        for record in expected:
            group = totals.setdefault(record["seg"], [0, Decimal(0)])
            group[0] += 1
            group[1] += Decimal(str(record["total"]))
        assert {r["seg"]: (r["n"], r["revenue"]) for r in view(self.wh, "seg_totals")} == {
            seg: (n, norm(revenue)) for seg, (n, revenue) in totals.items()}


class SqliteShopMachine(ShopMachine):
    dialect = "sqlite"


class PostgresShopMachine(ShopMachine):
    dialect = "postgresql"


_common: dict[str, Any] = {
    "stateful_step_count": 10,
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much],
}

TestIncrementalEqualsFullSqlite = SqliteShopMachine.TestCase
TestIncrementalEqualsFullSqlite.settings = settings(max_examples=25, **_common)

TestIncrementalEqualsFullPostgres = PostgresShopMachine.TestCase
TestIncrementalEqualsFullPostgres.settings = settings(max_examples=8, **_common)
TestIncrementalEqualsFullPostgres.pytestmark = [pytest.mark.postgres]
