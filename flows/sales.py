"""The sales warehouse: the reference flow.

Sources, in the data directory ``data_dir``:

- ``sales_<region>.csv``: one full snapshot per region;
- the shop database at ``source_url`` (default ``sqlite:///<data_dir>/shop.db``):
  ``customers``, ``products`` and ``fx_rates``, each with an ``updated_at``.

Outputs: ``sales`` (with derived columns), ``daily_sales``,
``customer_summary``, ``exceptions`` and ``rejects``.

``sales.nightly`` rebuilds everything (and finds rows deleted in the shop
database); ``sales.refresh`` consumes only what changed since the last run.
Both end with validation checks.

    loader run sales.nightly -p data_dir=DIR [-p source_url=URL]
    loader run sales.refresh -p data_dir=DIR
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from celery import chain, group
from sqlalchemy.engine import Connection

from loader import (
    Aggregate,
    CsvSnapshot,
    Derive,
    Field,
    Flow,
    Lookup,
    Quality,
    Rule,
    SqlExtract,
    cols,
    count,
    max_of,
    min_of,
    step,
    sum_of,
)
from loader.coltypes import exact_sum, iso_date, round_half_even
from loader.processors.base import Context
from loader.processors.validate import Check, Validate
from loader.sources.csvfile import parse_code, parse_decimal, parse_int, parse_timestamp
from loader.tracking import physical_name

SHOP = "sqlite:///{data_dir}/shop.db"
CENT = Decimal("0.01")
DERIVED = ("sold_on", "amount", "rate_to_aud", "amount_aud", "customer_segment", "category")

# --- extract: the region files and the shop database ----------------------------------

sales_files = CsvSnapshot(
    name="sales_files",
    table="sales",
    pattern="sales_{region}.csv",
    key=("region", "txn_id"),
    fields=(
        Field("txn_id"),
        Field("sold_at", "timestamp", parse_timestamp, nullable=False),
        Field("store_id"),
        Field("customer_id"),
        Field("sku"),
        Field("quantity", "integer", parse_int, nullable=False),
        Field("unit_price", "decimal:4", parse_decimal(4), nullable=False),
        Field("currency", "text", parse_code(3), nullable=False),
    ),
    reserved=DERIVED,
)

customers = SqlExtract(
    name="shop_customers", table="customers", source_table="customers",
    key=cols("customer_id"),
    columns=cols("name, email, country, segment, updated_at:timestamp"),
    url_default=SHOP,
)

products = SqlExtract(
    name="shop_products", table="products", source_table="products",
    key=cols("sku"),
    columns=cols("name, category, updated_at:timestamp"),
    url_default=SHOP,
)

fx_rates = SqlExtract(
    name="shop_fx_rates", table="fx_rates", source_table="fx_rates",
    key=cols("currency, day:date"),
    columns=cols("rate_to_aud:decimal, updated_at:timestamp"),
    transforms={"currency": str.upper},
    url_default=SHOP,
)

# --- transform: derived columns of sales ------------------------------------------------


def derived(row: Mapping[str, Any]) -> dict[str, Any]:
    """Every derived column but sold_on, in Python: the amount, the rate (1 for AUD, else
    the day's rate), the amount in AUD half-even to cents, the segment and the category."""
    amount = row["quantity"] * row["unit_price"]
    rate = Decimal(1) if row["currency"] == "AUD" else row["fx.rate_to_aud"]
    amount_aud = None if rate is None else (amount * rate).quantize(
        CENT, rounding=ROUND_HALF_EVEN)
    return {"amount": amount, "rate_to_aud": rate, "amount_aud": amount_aud,
            "customer_segment": row["customer.segment"], "category": row["product.category"]}


def _rate(c: Mapping[str, Any]) -> Any:
    return sa.case((c["currency"] == "AUD", sa.literal(1)), else_=c["fx.rate_to_aud"])


# One derive gives every derived column, so a full run rewrites each row once, in SQL:
# half-even rounding is exact on PostgreSQL's NUMERIC, and on SQLite, which stores
# decimals as REAL, round_half_even multiplies exactly through the warehouse's decimal
# functions. ``derived`` gives the same values in Python, for other databases.
sales_derived = Derive(
    name="sales_derived", table="sales",
    inputs=("sold_at", "quantity", "unit_price", "currency", "customer_id", "sku"),
    lookups=(Lookup.of("fx", "fx_rates", {"currency": "currency", "sold_on": "day"},
                       ["rate_to_aud"]),
             Lookup.of("customer", "customers", {"customer_id": "customer_id"}, ["segment"]),
             Lookup.of("product", "products", {"sku": "sku"}, ["category"])),
    outputs=cols("sold_on:date, amount:decimal:4, rate_to_aud:decimal, amount_aud:decimal:2, "
                 "customer_segment, category"),
    compute=derived,
    sql={"sold_on": lambda c: sa.func.date(c["sold_at"]),
         "amount": lambda c: c["quantity"] * c["unit_price"],
         "rate_to_aud": _rate,
         "amount_aud": lambda c: round_half_even(c["amount"] * _rate(c), 2),
         "customer_segment": lambda c: c["customer.segment"],
         "category": lambda c: c["product.category"]},
    sql_dialects=("postgresql", "sqlite"),
)

# --- load: reports and data quality ----------------------------------------------------

daily_sales = Aggregate(
    name="daily_sales_groups", source="sales", target="daily_sales",
    group_by=("sold_on", "region", "category"),
    measures=(count("txns"), sum_of("quantity", "units"),
              sum_of("amount_aud", "revenue_aud", "decimal:2", default=Decimal("0.00"))),
)

customer_summary = Aggregate(
    name="customer_summary_groups", source="sales", target="customer_summary",
    group_by=("customer_id",), not_null=("customer_id",),
    measures=(max_of("customer_segment", "segment", "text"), count("txns"),
              sum_of("amount_aud", "revenue_aud", "decimal:2", default=Decimal("0.00")),
              min_of("sold_at", "first_sold_at", "timestamp"),
              max_of("sold_at", "last_sold_at", "timestamp")),
)


# The rules are SQL: one statement per rule finds every finding among the rows to check.
Values = Mapping[str, Any]


def missing_fx_rate(c: Values) -> tuple[Any, Any]:
    return (c["rate_to_aud"].is_(None),
            "no " + c["currency"] + " rate for " + iso_date(c["sold_on"]))


def unknown_customer(c: Values) -> tuple[Any, Any]:
    return (sa.and_(c["customer_id"].is_not(None), sa.not_(c["customer"])),
            "customer " + c["customer_id"] + " is not in customers")


def unknown_sku(c: Values) -> tuple[Any, Any]:
    return (sa.and_(c["sku"].is_not(None), sa.not_(c["product"])),
            "sku " + c["sku"] + " is not in products")


sales_quality = Quality(
    name="sales_quality", table="sales",
    rules=(
        Rule("missing_fx_rate", None, ("rate_to_aud", "currency", "sold_on"),
             sql=missing_fx_rate),
        Rule("unknown_customer", None, ("customer_id",),
             (Lookup.of("customer", "customers", {"customer_id": "customer_id"}),),
             sql=unknown_customer),
        Rule("unknown_sku", None, ("sku",),
             (Lookup.of("product", "products", {"sku": "sku"}),), sql=unknown_sku),
    ),
)

# --- validation ------------------------------------------------------------------------


def _scalar(conn: Connection, query: sa.Select[Any]) -> Any:
    return conn.execute(query).scalar()


def sales_totals(conn: Connection, ctx: Context) -> tuple[Decimal, int, int]:
    """sum(amount_aud), the row count and the count of rows with a customer_id of
    sales: one scan, shared by the checks that need them, and not repeated by a later
    run when nothing has written to sales since (``Context.remembered``)."""
    if "sales_totals" not in ctx.memo:
        sales = sa.table("sales", sa.column("amount_aud"), sa.column("customer_id"))

        def scan() -> list[Any]:
            by_row, rows, with_customer = conn.execute(sa.select(
                sa.func.coalesce(exact_sum(sales.c.amount_aud, 2), 0), sa.func.count(),
                sa.func.count(sales.c.customer_id))).one()
            return [str(Decimal(by_row)), int(rows), int(with_customer)]

        by_row, rows, with_customer = ctx.remembered(conn, physical_name("sales"), "totals",
                                                     scan)
        ctx.memo["sales_totals"] = (Decimal(by_row), rows, with_customer)
    totals: tuple[Decimal, int, int] = ctx.memo["sales_totals"]
    return totals


def revenue_adds_up(conn: Connection, ctx: Context) -> str | None:
    """daily_sales holds every sale once: same revenue, same count."""
    daily = sa.table("daily_sales", sa.column("revenue_aud"), sa.column("txns"))

    def scan() -> list[Any]:
        by_day, txns = conn.execute(sa.select(
            sa.func.coalesce(exact_sum(daily.c.revenue_aud, 2), 0),
            sa.func.coalesce(sa.func.sum(daily.c.txns), 0))).one()
        return [str(Decimal(by_day)), int(txns)]

    by_day, txns = ctx.remembered(conn, physical_name("daily_sales"), "totals", scan)
    by_row, rows, _ = sales_totals(conn, ctx)
    if Decimal(by_day) != Decimal(by_row):
        return f"sum(daily_sales.revenue_aud) = {by_day} but sum(sales.amount_aud) = {by_row}"
    if int(txns) != rows:
        return f"sum(daily_sales.txns) = {txns} but sales has {rows} rows"
    return None


def every_region_loaded(conn: Connection, ctx: Context) -> str | None:
    """Each region file in the data directory has been loaded at least once."""
    from loader import meta

    loaded = set(conn.execute(sa.select(meta.sources.c.source).where(
        meta.sources.c.processor == sales_files.name)).scalars())
    present = {path.name for path in sales_files.files(Path(ctx.param("data_dir"))).values()}
    missing = sorted(present - loaded)
    return f"never loaded: {', '.join(missing)}" if missing else None


def customers_add_up(conn: Connection, ctx: Context) -> str | None:
    """customer_summary counts every sale that has a customer once."""
    summary = sa.table("customer_summary", sa.column("txns"))

    def scan() -> int:
        return int(_scalar(conn, sa.select(sa.func.coalesce(sa.func.sum(summary.c.txns), 0))))

    txns = ctx.remembered(conn, physical_name("customer_summary"), "totals", scan)
    _, _, rows = sales_totals(conn, ctx)
    if int(txns) != rows:
        return f"sum(customer_summary.txns) = {txns} but {rows} sales have a customer_id"
    return None


validation = Validate(
    name="sales_validation",
    checks=(
        Check("revenue_adds_up", revenue_adds_up,
              ("daily_sales.revenue_aud", "daily_sales.txns", "sales.amount_aud")),
        Check("every_region_loaded", every_region_loaded, ("sales.region",)),
        Check("customers_add_up", customers_add_up,
              ("customer_summary.txns", "sales.customer_id")),
    ),
)

# --- the flows -------------------------------------------------------------------------

pipeline = chain(
    group(step(sales_files), step(customers), step(products), step(fx_rates)),
    step(sales_derived),
    group(step(daily_sales), step(customer_summary), step(sales_quality)),
    step(validation),
)

nightly = Flow(pipeline, mode="full", params=("data_dir",),
               description="Rebuild everything from every source, deletes included.")
refresh = Flow(pipeline, mode="refresh", params=("data_dir",),
               description="Consume only what changed since the last run.")
