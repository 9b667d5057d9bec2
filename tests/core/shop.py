"""A small shop warehouse shared by the core tests, and helpers to read it back.

Sources: ``orders_<shop>.csv`` snapshot files (one per shop partition) and a
SQLite database ``shop.db`` with a ``customers`` table read by cursor. The
flow: load orders, load customers, derive ``total`` and ``seg`` (through a
lookup of the customer), aggregate ``seg_totals`` by ``seg``, and check
that every order's customer exists.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from conftest import pg_schema_url

from loader import (
    Aggregate,
    CsvSnapshot,
    Derive,
    Field,
    Lookup,
    Quality,
    Rule,
    SqlExtract,
    Warehouse,
    cols,
    count,
    meta,
    run_sequence,
    sum_of,
)
from loader.coltypes import micros_stamp
from loader.execute import RunOutcome
from loader.sources.csvfile import parse_decimal, parse_int
from loader.tracking import CHANGED_AT, DELETED_AT, LIVE_SINCE

HEADER = ("id", "qty", "price", "cust")
START = datetime(2024, 1, 1, 8, 0, 0)


def orders_extract() -> CsvSnapshot:
    return CsvSnapshot(
        "orders_csv", "orders", "orders_{shop}.csv", ("shop", "id"),
        (Field("id"), Field("qty", "integer", parse_int, nullable=False),
         Field("price", "decimal:2", parse_decimal(2), nullable=False), Field("cust")),
    )


def customers_extract() -> SqlExtract:
    return SqlExtract("customers_db", "customers", "customers", cols("cust"),
                      cols("seg, updated_at:timestamp"),
                      url_default="sqlite:///{data_dir}/shop.db")


def _values(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"total": row["qty"] * row["price"], "seg": row["c.seg"]}


def order_values(page: int = 20_000) -> Derive:
    return Derive("order_values", "orders", ("qty", "price", "cust"),
                  cols("total:decimal:2, seg"), _values,
                  lookups=(Lookup.of("c", "customers", {"cust": "cust"}, ["seg"]),), page=page)


def by_seg() -> Aggregate:
    return Aggregate("by_seg", "orders", "seg_totals", ("seg",),
                     (count("n"), sum_of("total", "revenue", "decimal:2", Decimal(0))))


def _unknown_customer(row: Mapping[str, Any]) -> str | None:
    if row["cust"] is None or row["c"]:
        return None
    return f"customer {row['cust']} not found"


def _unknown_customer_sql(c: Mapping[str, Any]) -> tuple[Any, Any]:
    """The same rule in SQL."""
    return (sa.and_(c["cust"].is_not(None), sa.not_(c["c"])),
            "customer " + c["cust"] + " not found")


def order_checks(page: int = 20_000, in_sql: bool = False) -> Quality:
    lookups = (Lookup.of("c", "customers", {"cust": "cust"}),)
    rule = (Rule("unknown_customer", None, ("cust",), lookups, sql=_unknown_customer_sql)
            if in_sql else Rule("unknown_customer", _unknown_customer, ("cust",), lookups))
    return Quality("order_checks", "orders", (rule,), page=page)


def flow(page: int = 20_000, sql_rules: bool = False) -> list[Any]:
    """The five processors of the shop warehouse, in order (``page``: rows per page;
    ``sql_rules``: the quality rule in SQL rather than Python)."""
    return [orders_extract(), customers_extract(), order_values(page), by_seg(),
            order_checks(page, sql_rules)]


@dataclass
class Shop:
    """The source side: CSV files per shop and the customers database, with a clock."""

    data_dir: Path
    orders: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)
    extras: dict[str, list[str]] = field(default_factory=dict)
    customers: dict[str, tuple[str | None, datetime]] = field(default_factory=dict)
    clock: datetime = START

    def __post_init__(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(self.db_path) as db:
            db.execute("CREATE TABLE IF NOT EXISTS customers "
                       "(cust TEXT PRIMARY KEY, seg TEXT, updated_at TIMESTAMP)")
        db.close()

    @property
    def db_path(self) -> Path:
        return self.data_dir / "shop.db"

    @property
    def params(self) -> dict[str, str]:
        return {"data_dir": str(self.data_dir)}

    def tick(self) -> datetime:
        self.clock += timedelta(minutes=1)
        return self.clock

    # --- orders -----------------------------------------------------------------------

    def csv_path(self, shop: str) -> Path:
        return self.data_dir / f"orders_{shop}.csv"

    def put_order(self, shop: str, id_: str, qty: int | str, price: str, cust: str | None,
                  **extra: str) -> None:
        rows = self.orders.setdefault(shop, {})
        rows[id_] = {"id": id_, "qty": str(qty), "price": price, "cust": cust or "", **extra}

    def write_orders(self, shop: str) -> None:
        header = [*HEADER, *self.extras.get(shop, [])]
        lines = [",".join(header)]
        for row in self.orders.get(shop, {}).values():
            lines.append(",".join(row.get(c, "") for c in header))
        self.csv_path(shop).write_text("\n".join(lines) + "\n", encoding="utf-8")

    # --- customers --------------------------------------------------------------------

    def put_customer(self, cust: str, seg: str | None, updated_at: datetime | None = None,
                     ) -> None:
        moment = updated_at if updated_at is not None else self.tick()
        self.customers[cust] = (seg, moment)
        with sqlite3.connect(self.db_path) as db:
            db.execute("INSERT OR REPLACE INTO customers VALUES (?, ?, ?)",
                       (cust, seg, moment.strftime("%Y-%m-%d %H:%M:%S")))
        db.close()

    def delete_customer(self, cust: str) -> None:
        self.customers.pop(cust, None)
        with sqlite3.connect(self.db_path) as db:
            db.execute("DELETE FROM customers WHERE cust = ?", (cust,))
        db.close()

    def run(self, wh: Warehouse, mode: str = "refresh",
            processors: Sequence[Any] | None = None) -> RunOutcome:
        return run_sequence(wh, list(processors) if processors is not None else flow(),
                            mode=mode, params=self.params)  # type: ignore[arg-type]


def sample_shop(data_dir: Path) -> Shop:
    """Two shops, three customers in two segments, one order of an unknown customer."""
    shop = Shop(data_dir)
    shop.put_customer("c1", "A")
    shop.put_customer("c2", "B")
    shop.put_customer("c3", "A")
    shop.put_order("east", "1", 2, "3.50", "c1")
    shop.put_order("east", "2", 1, "10.00", "c2")
    shop.put_order("east", "3", 4, "1.25", "c9")
    shop.put_order("west", "1", 5, "2.00", "c3")
    shop.put_order("west", "2", 3, "0.10", "c2")
    shop.write_orders("east")
    shop.write_orders("west")
    return shop


# --- reading the warehouse back ----------------------------------------------------------


def norm(value: Any) -> Any:
    """A value comparable across dialects: decimals and floats as Decimal, stamps as text."""
    if isinstance(value, float):
        value = Decimal(repr(value))
    if isinstance(value, Decimal):
        if value == value.to_integral_value():
            return value.quantize(Decimal(1))
        return value.normalize()
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="microseconds")
    return value


def _sort_key(row: Iterable[Any]) -> tuple[Any, ...]:
    return tuple((v is None, str(v)) for v in row)


def rows(conn: sa.Connection, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """The rows of a query, normalised, in a stable order."""
    result = conn.execute(sa.text(sql), params).all()
    return sorted((tuple(norm(v) for v in row) for row in result), key=_sort_key)


def is_stamp(column: str) -> bool:
    return column.startswith(CHANGED_AT) or column in (DELETED_AT, LIVE_SINCE)


def records(conn: sa.Connection, table: str) -> list[dict[str, Any]]:
    """Every row of a table or view as a dict by column name, normalised and sorted.

    Stamps come as timestamps whatever the dialect stores (SQLite: integers)."""
    quoted = conn.dialect.identifier_preparer.quote(table)
    result = conn.execute(sa.text(f"SELECT * FROM {quoted}")).mappings().all()
    out = [{k: norm(micros_stamp(v) if isinstance(v, int) and is_stamp(k) else v)
            for k, v in row.items()} for row in result]
    return sorted(out, key=lambda r: _sort_key(sorted(r.items())))


def view(wh: Warehouse, name: str) -> list[dict[str, Any]]:
    with wh.begin() as conn:
        return records(conn, name)


def open_findings(wh: Warehouse) -> set[tuple[str, str, str | None]]:
    with wh.begin() as conn:
        return {(r[0], r[1], r[2]) for r in conn.execute(sa.text(
            "SELECT rule, row_key, detail FROM exceptions WHERE resolved_at IS NULL"))}


def outputs(wh: Warehouse) -> dict[str, Any]:
    """What the shop warehouse shows its users: the views and the open findings."""
    return {
        "orders": view(wh, "orders"),
        "customers": view(wh, "customers"),
        "seg_totals": view(wh, "seg_totals"),
        "exceptions": open_findings(wh),
    }


def table_names(conn: sa.Connection) -> list[str]:
    return sorted(sa.inspect(conn).get_table_names())


def dump(wh: Warehouse, *, meta: bool = False) -> dict[str, list[dict[str, Any]]]:
    """Every tracked table, membership table and ``exceptions``, in full (stamps too).

    With ``meta`` also the watermarks, loaded sources, rejects, registry and schema history.
    """
    wanted_meta = ("loader_watermarks", "loader_sources", "rejects", "loader_tables",
                   "loader_schema_history")
    with wh.begin() as conn:
        names = [n for n in table_names(conn)
                 if n.endswith("_tracked") or n.startswith("_members_") or n == "exceptions"
                 or (meta and n in wanted_meta)]
        return {n: records(conn, n) for n in names}


def assert_wrote_nothing(outcome: RunOutcome) -> None:
    assert outcome.status == "succeeded", outcome.error
    for name, result in outcome.results.items():
        assert (result.inserted, result.updated, result.deleted) == (0, 0, 0), (name, result)


def run_ts(wh: Warehouse, run_id: int) -> Any:
    """The (normalised) timestamp of a run, as the stamps it wrote show it."""
    with wh.begin() as conn:
        return norm(conn.execute(sa.select(meta.runs.c.run_ts)
                                 .where(meta.runs.c.run_id == run_id)).scalar_one())


@contextmanager
def fresh_warehouse(like: Warehouse, tmp_path: Path) -> Iterator[Warehouse]:
    """A new, empty warehouse of the same dialect as ``like``."""
    if like.dialect == "sqlite":
        wh = Warehouse(f"sqlite:///{tmp_path}/fresh-{uuid.uuid4().hex[:8]}.db")
        try:
            yield wh
        finally:
            wh.dispose()
        return
    schema = pg_schema_url()
    wh = Warehouse(next(schema))
    try:
        yield wh
    finally:
        wh.dispose()
        schema.close()


def fresh_full_outputs(shop: Shop, like: Warehouse, tmp_path: Path) -> dict[str, Any]:
    """The outputs of one full run over the shop's sources into a new warehouse."""
    with fresh_warehouse(like, tmp_path) as wh:
        outcome = shop.run(wh, "full")
        assert outcome.status == "succeeded", outcome.error
        return outputs(wh)
