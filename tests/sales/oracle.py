"""The sales warehouse contract, written as plain Python: what the outputs must hold.

Given a data directory (``sales_<region>.csv`` files and a shop database) this computes,
straight from the contract's text and without the loader, the expected rows of
``sales`` (with every derived column), ``daily_sales``, ``customer_summary``, the open
``exceptions`` (as ``(rule, row_key)`` pairs) and the ``rejects``
(``(source, line, reason, raw)``).

It is deliberately simple: whole files in memory, the ``csv`` module for quoting, one
dict per row. Nothing here is imported from ``loader``.
"""

from __future__ import annotations

import csv
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from pathlib import Path
from typing import Any

from dateutil.parser import isoparse

REQUIRED = ("txn_id", "sold_at", "store_id", "customer_id", "sku", "quantity", "unit_price",
            "currency")
DERIVED = ("sold_on", "amount", "rate_to_aud", "amount_aud", "customer_segment", "category")
SALES_COLUMNS = ("region", *REQUIRED, *DERIVED)
DAILY_COLUMNS = ("sold_on", "region", "category", "txns", "units", "revenue_aud")
SUMMARY_COLUMNS = ("customer_id", "segment", "txns", "revenue_aud", "first_sold_at",
                   "last_sold_at")
REASONS = ("field_count", "empty_key", "bad_sold_at", "bad_quantity", "bad_unit_price",
           "bad_currency", "duplicate_key")

FILE_NAME = re.compile(r"sales_([A-Za-z0-9_]+)\.csv")
QUANTITY = re.compile(r"[+-]?[0-9]+")
UNIT_PRICE = re.compile(r"[+-]?[0-9]+(\.[0-9]{1,4})?")
CURRENCY = re.compile(r"[A-Za-z]{3}")
CENT = Decimal("0.01")
FOUR_PLACES = Decimal("0.0001")

SalesKey = tuple[str, str]


class RunFailure(Exception):
    """The contract says the whole run fails (e.g. two region files differing in case)."""


class FileFailure(Exception):
    """The contract says this file's extract fails; ``column`` is the column to name."""

    def __init__(self, file: str, column: str | None, message: str) -> None:
        super().__init__(f"{file}: {message}")
        self.file = file
        self.column = column


# --- reading a region file -----------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One CSV record: the physical line it starts on, its text, its stripped fields."""

    line: int
    raw: str
    fields: list[str]


def _physical_lines(path: Path) -> list[str]:
    """The file's lines, each with its own line end, after an optional BOM."""
    text = path.read_bytes().decode("utf-8")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = [line + "\n" for line in text.split("\n")]
    lines[-1] = lines[-1][:-1]
    if lines[-1] == "":
        lines.pop()
    return lines


def _without_line_end(text: str) -> str:
    if text.endswith("\r\n"):
        return text[:-2]
    if text.endswith("\n"):
        return text[:-1]
    return text


def records(path: Path) -> Iterator[Record]:
    """The non-blank records of a file, header first.

    A quoted field may hold commas, quotes (doubled) and line ends; whitespace around
    every field (also before an opening quote) is stripped; a blank line is skipped.
    """
    consumed: list[tuple[int, str]] = []

    def feed() -> Iterator[str]:
        for number, line in enumerate(_physical_lines(path), 1):
            consumed.append((number, line))
            yield line

    for row in csv.reader(feed(), skipinitialspace=True):
        chunk = list(consumed)
        consumed.clear()
        raw = _without_line_end("".join(line for _, line in chunk))
        if not raw.strip():
            continue
        yield Record(chunk[0][0], raw, [value.strip() for value in row])


@dataclass
class FileLoad:
    """What loading one region file gives: its rows by key, its rejects, its extras."""

    region: str
    extras: list[str]
    rows: dict[SalesKey, dict[str, Any]] = field(default_factory=dict)
    rejects: list[tuple[str, int, str, str]] = field(default_factory=list)


def utc(text: str) -> datetime:
    """``sold_at`` as naive UTC (a value without an offset is UTC already)."""
    value = isoparse(text)
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def _reason(fields: list[str], width: int, at: dict[str, int]) -> str | None:
    """The first reject reason (duplicate keys aside) that applies to a record."""
    if len(fields) != width:
        return "field_count"
    if fields[at["txn_id"]] == "":
        return "empty_key"
    try:
        utc(fields[at["sold_at"]])
    except (ValueError, OverflowError):
        return "bad_sold_at"
    if not QUANTITY.fullmatch(fields[at["quantity"]]):
        return "bad_quantity"
    if not UNIT_PRICE.fullmatch(fields[at["unit_price"]]):
        return "bad_unit_price"
    if not CURRENCY.fullmatch(fields[at["currency"]]):
        return "bad_currency"
    return None


def _check_header(name: str, header: list[str]) -> list[str]:
    """The header's extra columns; a file whose header breaks a rule fails."""
    seen: set[str] = set()
    for column in header:
        if column in seen:
            raise FileFailure(name, column, f"column {column!r} appears twice in the header")
        seen.add(column)
    for column in REQUIRED:
        if column not in seen:
            raise FileFailure(name, column, f"missing column {column!r}")
    extras = [c for c in header if c not in REQUIRED]
    taken = {c.lower() for c in SALES_COLUMNS}
    for column in extras:
        if column.lower() in taken:
            raise FileFailure(name, column, f"extra column {column!r} clashes with sales")
    return extras


def load_file(path: Path, region: str) -> FileLoad:
    """Load one region file as the contract says (raises FileFailure for a bad header)."""
    found = records(path)
    header = next(found, None)
    if header is None:
        raise FileFailure(path.name, REQUIRED[0], "no header row")
    extras = _check_header(path.name, header.fields)
    at = {name: i for i, name in enumerate(header.fields)}
    load = FileLoad(region, extras)
    for record in found:
        fields = record.fields
        reason = _reason(fields, len(header.fields), at)
        key = (region, fields[at["txn_id"]]) if reason is None else None
        if key is not None and key in load.rows:
            reason = "duplicate_key"
        if reason is not None:
            load.rejects.append((path.name, record.line, reason, record.raw))
            continue
        assert key is not None
        value = {name: fields[at[name]] or None for name in (*REQUIRED, *extras)}
        value["region"] = region
        value["sold_at"] = utc(fields[at["sold_at"]])
        value["quantity"] = int(fields[at["quantity"]])
        value["unit_price"] = Decimal(fields[at["unit_price"]])
        value["currency"] = fields[at["currency"]].upper()
        load.rows[key] = value
    return load


def region_files(data_dir: Path) -> dict[str, Path]:
    """The region files by (lowercase) region; two names differing in case fail the run."""
    found: dict[str, Path] = {}
    for path in sorted(data_dir.iterdir()):
        match = FILE_NAME.fullmatch(path.name)
        if match is None or not path.is_file():
            continue
        region = match.group(1).lower()
        if region in found:
            raise RunFailure(f"{found[region].name} and {path.name} give region {region}")
        found[region] = path
    return found


# --- the shop database ---------------------------------------------------------------


def _rate(value: Any) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(str(value).strip())


@dataclass
class Shop:
    """The live shop rows the lookups use."""

    segments: dict[str, str | None]
    categories: dict[str, str | None]
    rates: dict[tuple[str, date], Decimal | None]


def read_shop(path: Path) -> Shop:
    con = sqlite3.connect(path)
    try:
        segments = dict(con.execute("SELECT customer_id, segment FROM customers"))
        categories = dict(con.execute("SELECT sku, category FROM products"))
        rates: dict[tuple[str, date], Decimal | None] = {}
        for currency, day, rate in con.execute("SELECT currency, day, rate_to_aud FROM fx_rates"):
            key = (str(currency).upper(), date.fromisoformat(str(day)[:10]))
            if key in rates:
                raise ValueError(f"fx_rates has {key} twice once upper-cased")
            rates[key] = _rate(rate)
    finally:
        con.close()
    return Shop(segments, categories, rates)


# --- derived columns, aggregates, findings ---------------------------------------------


def derive(row: dict[str, Any], shop: Shop) -> dict[str, Any]:
    """The row with its derived columns."""
    out = dict(row)
    out["sold_on"] = row["sold_at"].date()
    with localcontext() as ctx:
        ctx.prec = 200
        out["amount"] = (row["quantity"] * row["unit_price"]).quantize(FOUR_PLACES)
        if row["currency"] == "AUD":
            rate: Decimal | None = Decimal(1)
        else:
            rate = shop.rates.get((row["currency"], out["sold_on"]))
        out["rate_to_aud"] = rate
        out["amount_aud"] = None if rate is None else (out["amount"] * rate).quantize(
            CENT, rounding=ROUND_HALF_EVEN)
    cid, sku = row["customer_id"], row["sku"]
    out["customer_segment"] = shop.segments.get(cid) if cid is not None else None
    out["category"] = shop.categories.get(sku) if sku is not None else None
    return out


def _revenue(rows: list[dict[str, Any]]) -> Decimal:
    return sum((r["amount_aud"] for r in rows if r["amount_aud"] is not None), Decimal("0.00"))


def daily_sales(sales: dict[SalesKey, dict[str, Any]]) -> dict[tuple[Any, ...], dict[str, Any]]:
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in sales.values():
        groups.setdefault((row["sold_on"], row["region"], row["category"]), []).append(row)
    return {
        key: {"sold_on": key[0], "region": key[1], "category": key[2], "txns": len(rows),
              "units": sum(r["quantity"] for r in rows), "revenue_aud": _revenue(rows)}
        for key, rows in groups.items()
    }


def customer_summary(sales: dict[SalesKey, dict[str, Any]],
                     shop: Shop) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in sales.values():
        if row["customer_id"] is not None:
            groups.setdefault(row["customer_id"], []).append(row)
    return {
        cid: {"customer_id": cid, "segment": shop.segments.get(cid), "txns": len(rows),
              "revenue_aud": _revenue(rows),
              "first_sold_at": min(r["sold_at"] for r in rows),
              "last_sold_at": max(r["sold_at"] for r in rows)}
        for cid, rows in groups.items()
    }


def row_key(key: SalesKey) -> str:
    return f"{key[0]}:{key[1]}"


def open_exceptions(sales: dict[SalesKey, dict[str, Any]], shop: Shop) -> set[tuple[str, str]]:
    found = set()
    for key, row in sales.items():
        if row["rate_to_aud"] is None:
            found.add(("missing_fx_rate", row_key(key)))
        if row["customer_id"] is not None and row["customer_id"] not in shop.segments:
            found.add(("unknown_customer", row_key(key)))
        if row["sku"] is not None and row["sku"] not in shop.categories:
            found.add(("unknown_sku", row_key(key)))
    return found


# --- everything at once ----------------------------------------------------------------


@dataclass
class Expected:
    """The outputs the contract defines for one state of the sources."""

    sales: dict[SalesKey, dict[str, Any]]
    extras: list[str]
    daily_sales: dict[tuple[Any, ...], dict[str, Any]]
    customer_summary: dict[str, dict[str, Any]]
    exceptions: set[tuple[str, str]]
    rejects: set[tuple[str, int, str, str]]


def expected(data_dir: Path, shop_path: Path | None = None) -> Expected:
    """Every output for ``data_dir`` (raises RunFailure / FileFailure where the run or a
    file fails, since what such a failure leaves behind depends on earlier runs)."""
    shop = read_shop(shop_path or data_dir / "shop.db")
    rows: dict[SalesKey, dict[str, Any]] = {}
    rejects: set[tuple[str, int, str, str]] = set()
    extras: list[str] = []
    for region, path in region_files(data_dir).items():
        load = load_file(path, region)
        rows.update(load.rows)
        rejects.update(load.rejects)
        extras += [e for e in load.extras if e not in extras]
    sales = {key: derive(row, shop) for key, row in rows.items()}
    return Expected(sales, extras, daily_sales(sales), customer_summary(sales, shop),
                    open_exceptions(sales, shop), rejects)
