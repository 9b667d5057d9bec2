"""Helpers for the sales flow tests: hand-written data directories, runs, reading outputs.

The outputs are read back with plain SQL through the user-facing names (``sales``,
``daily_sales``, ``customer_summary``, ``exceptions``, ``rejects``) and normalised so
that both dialects give the same Python values (SQLite returns REAL as float, dates
and timestamps as text).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import pg_schema_url
from oracle import DAILY_COLUMNS, SALES_COLUMNS, SUMMARY_COLUMNS, Expected

from loader import Warehouse
from loader.flow import load
from loader.history import task_runs
from loader.runner import RunReport, run_flow

HEADER = "txn_id,sold_at,store_id,customer_id,sku,quantity,unit_price,currency"
OLD = "2026-01-01 00:00:00"
SHOP_SCHEMA = """
CREATE TABLE customers (customer_id TEXT PRIMARY KEY, name TEXT, email TEXT, country TEXT,
                        segment TEXT, updated_at TIMESTAMP);
CREATE TABLE products (sku TEXT PRIMARY KEY, name TEXT, category TEXT, updated_at TIMESTAMP);
CREATE TABLE fx_rates (currency TEXT, day DATE, rate_to_aud NUMERIC, updated_at TIMESTAMP,
                       PRIMARY KEY (currency, day));
"""
DECIMALS = {"unit_price", "amount", "rate_to_aud", "amount_aud", "revenue_aud"}
DATES = {"sold_on"}
TIMESTAMPS = {"sold_at", "first_sold_at", "last_sold_at", "first_seen_at", "last_seen_at",
              "resolved_at", "rejected_at"}

DIALECTS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


# --- data directories ------------------------------------------------------------------


def make_shop(data_dir: Path, customers: Iterable[tuple[str, str | None]] = (),
              products: Iterable[tuple[str, str | None]] = (),
              fx: Iterable[tuple[str, str, Any]] = (), stamp: str = OLD) -> Path:
    """A shop.db with the contract's tables: (id, segment), (sku, category), rates."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "shop.db"
    path.unlink(missing_ok=True)
    con = sqlite3.connect(path)
    try:
        con.executescript(SHOP_SCHEMA)
        con.executemany("INSERT INTO customers VALUES (?, ?, ?, ?, ?, ?)",
                        [(c, f"name {c}", f"{c}@example.com", "AU", s, stamp)
                         for c, s in customers])
        con.executemany("INSERT INTO products VALUES (?, ?, ?, ?)",
                        [(k, f"product {k}", cat, stamp) for k, cat in products])
        con.executemany("INSERT INTO fx_rates VALUES (?, ?, ?, ?)",
                        [(c, d, r, stamp) for c, d, r in fx])
        con.commit()
    finally:
        con.close()
    return path


def shop_sql(data_dir: Path, sql: str, *params: Any) -> None:
    """Run one statement on the data directory's shop.db and commit."""
    con = sqlite3.connect(data_dir / "shop.db")
    try:
        con.execute(sql, params)
        con.commit()
    finally:
        con.close()


def write_sales(data_dir: Path, region: str, rows: Sequence[str], *, header: str = HEADER,
                newline: str = "\n", bom: bool = False) -> Path:
    """``sales_<region>.csv`` with ``header`` and ``rows`` (each row one CSV text)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / f"sales_{region}.csv"
    text = newline.join([header, *rows]) + newline
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


# --- warehouses and runs ---------------------------------------------------------------


def dialect_url(dialect: str, tmp: Path) -> Iterator[str]:
    """A URL of a new, empty warehouse on ``dialect``."""
    if dialect == "sqlite":
        yield f"sqlite:///{tmp}/warehouse.db"
    else:
        yield from pg_schema_url()


def run(wh: Warehouse, flow: str, data_dir: Path, **params: str) -> RunReport:
    """Run ``sales.<flow>`` on ``data_dir`` in this process."""
    return run_flow(wh, load(f"sales.{flow}"), params={"data_dir": str(data_dir), **params},
                    poll=0.02)


def run_ok(wh: Warehouse, flow: str, data_dir: Path, **params: str) -> RunReport:
    report = run(wh, flow, data_dir, **params)
    assert report.ok, report.error
    return report


def errors_of(wh: Warehouse, report: RunReport) -> str:
    """Every error text a run left: the run's own and those of its task runs."""
    with wh.begin() as conn:
        tasks = task_runs(conn, report.run_id)
    texts = [report.error or ""]
    texts += [f"{t['error'] or ''} {json.dumps(t['details'])}" for t in tasks]
    return "\n".join(texts)


def run_ts(wh: Warehouse, run_id: int) -> datetime:
    with wh.begin() as conn:
        value = conn.execute(sa.text("SELECT run_ts FROM loader_runs WHERE run_id = :r"),
                             {"r": run_id}).scalar_one()
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


# --- reading outputs -------------------------------------------------------------------


def norm(column: str, value: Any) -> Any:
    """A value read with raw SQL, as the same Python value on both dialects."""
    if value is None:
        return None
    if column in DECIMALS:
        return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if column in DATES and isinstance(value, str):
        return date.fromisoformat(value[:10])
    if column in TIMESTAMPS and isinstance(value, str):
        return datetime.fromisoformat(value)
    return value


def query(wh: Warehouse, sql: str, **params: Any) -> list[dict[str, Any]]:
    with wh.begin() as conn:
        rows = conn.execute(sa.text(sql), params).mappings().all()
    return [{k: norm(k, v) for k, v in row.items()} for row in rows]


def columns(wh: Warehouse, view: str) -> list[str]:
    with wh.begin() as conn:
        return list(conn.execute(sa.text(f"SELECT * FROM {view} WHERE 1 = 0")).keys())


@dataclass
class Actual:
    """The warehouse's outputs, keyed like :class:`oracle.Expected`."""

    sales: dict[tuple[str, str], dict[str, Any]]
    sales_columns: list[str]
    daily_sales: dict[tuple[Any, ...], dict[str, Any]]
    customer_summary: dict[str, dict[str, Any]]
    exceptions: set[tuple[str, str]]
    exception_rows: list[dict[str, Any]]
    rejects: set[tuple[str, int, str, str]]


def outputs(wh: Warehouse) -> Actual:
    sales = {(r["region"], r["txn_id"]): r for r in query(wh, "SELECT * FROM sales")}
    daily = {(r["sold_on"], r["region"], r["category"]): r
             for r in query(wh, "SELECT * FROM daily_sales")}
    summary = {r["customer_id"]: r for r in query(wh, "SELECT * FROM customer_summary")}
    exceptions = query(wh, "SELECT * FROM exceptions ORDER BY id")
    opened = {(e["rule"], e["row_key"]) for e in exceptions if e["resolved_at"] is None}
    rejects = {(r["source"], r["line"], r["reason"], r["raw"])
               for r in query(wh, "SELECT source, line, reason, raw FROM rejects")}
    return Actual(sales, columns(wh, "sales"), daily, summary, opened, exceptions, rejects)


# --- comparing -------------------------------------------------------------------------


def _diff(what: str, actual: dict[Any, dict[str, Any]], expected: dict[Any, dict[str, Any]],
          names: Sequence[str]) -> list[str]:
    problems = []
    for key in sorted(set(actual) - set(expected), key=repr)[:5]:
        problems.append(f"{what}: unexpected row {key}: {actual[key]}")
    for key in sorted(set(expected) - set(actual), key=repr)[:5]:
        problems.append(f"{what}: missing row {key}: {expected[key]}")
    wrong = 0
    for key in sorted(set(actual) & set(expected), key=repr):
        for name in names:
            got, want = actual[key].get(name), expected[key].get(name)
            if got != want or (got is None) != (want is None):
                wrong += 1
                if wrong <= 8:
                    problems.append(f"{what} {key}.{name}: got {got!r}, want {want!r}")
    if wrong > 8:
        problems.append(f"{what}: {wrong} wrong cells in all")
    return problems


def differences(actual: Actual, expected: Expected) -> list[str]:
    """Every way the warehouse differs from the oracle (empty when they agree)."""
    problems = []
    missing_cols = [c for c in (*SALES_COLUMNS, *expected.extras)
                    if c not in actual.sales_columns]
    if missing_cols:
        problems.append(f"sales lacks columns {missing_cols}")
    names = [c for c in actual.sales_columns if c in SALES_COLUMNS or c in expected.extras]
    problems += _diff("sales", actual.sales, expected.sales, names)
    for extra in [c for c in actual.sales_columns if c not in names]:
        filled = [k for k, r in actual.sales.items() if r[extra] is not None]
        if filled:
            problems.append(f"sales.{extra} is no longer in any file but set for {filled[:3]}")
    problems += _diff("daily_sales", actual.daily_sales, expected.daily_sales, DAILY_COLUMNS)
    problems += _diff("customer_summary", actual.customer_summary, expected.customer_summary,
                      SUMMARY_COLUMNS)
    if actual.exceptions != expected.exceptions:
        extra = sorted(actual.exceptions - expected.exceptions)[:5]
        missing = sorted(expected.exceptions - actual.exceptions)[:5]
        problems.append(f"open exceptions: unexpected {extra}, missing {missing}")
    if actual.rejects != expected.rejects:
        problems.append(f"rejects: unexpected {sorted(actual.rejects - expected.rejects)[:5]}, "
                        f"missing {sorted(expected.rejects - actual.rejects)[:5]}")
    return problems


def same_outputs(a: Actual, b: Actual) -> list[str]:
    """How two warehouses' outputs differ (empty when equal)."""
    problems = []
    names = sorted(set(a.sales_columns) | set(b.sales_columns))
    problems += _diff("sales", a.sales, b.sales, names)
    problems += _diff("daily_sales", a.daily_sales, b.daily_sales, DAILY_COLUMNS)
    problems += _diff("customer_summary", a.customer_summary, b.customer_summary,
                      SUMMARY_COLUMNS)
    if a.exceptions != b.exceptions:
        problems.append(f"open exceptions differ: {sorted(a.exceptions ^ b.exceptions)[:6]}")
    if a.rejects != b.rejects:
        problems.append(f"rejects differ: {sorted(a.rejects ^ b.rejects)[:6]}")
    return problems
