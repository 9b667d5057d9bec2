"""Generator of data directories for the reference "sales" warehouse.

A data directory holds one ``sales_<region>.csv`` per region and a ``shop.db``
SQLite database (customers, products, fx_rates). :func:`generate` writes one
from a :class:`Scale`; the change functions then edit it in place the way the
shop and its tills would, so that ``loader demo``, tests and benchmarks can
check that a load picks up exactly what changed. Everything is deterministic
given a seed: each part draws from its own ``random.Random``.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import random
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

HEADER = (
    "txn_id",
    "sold_at",
    "store_id",
    "customer_id",
    "sku",
    "quantity",
    "unit_price",
    "currency",
)
CURRENCIES = ("AUD", "USD", "EUR", "GBP", "NZD", "JPY", "SGD", "CAD", "CHF", "HKD")
SEGMENTS = ("retail", "wholesale", "online", "vip")
SHOP_DB = "shop.db"
STAMP_FORMAT = "%Y-%m-%d %H:%M:%S"
EDITABLE = ("quantity", "unit_price", "customer_id", "sku", "sold_at")


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_REGION = re.compile(r"[A-Za-z0-9_]+")
_SALES_FILE = re.compile(r"sales_([A-Za-z0-9_]+)\.csv")
_TXN = re.compile(r"(.*)-(\d+)")
_INT = re.compile(r"-?\d+")
_PRICE = re.compile(r"\d+(?:\.\d{1,4})?")
_POS = {name: i for i, name in enumerate(HEADER)}
_FOREIGN = CURRENCIES[1:]
_CURRENCY_SET = frozenset(CURRENCIES)
_BASE_RATES = dict(
    zip(_FOREIGN, (1.52, 1.65, 1.93, 0.91, 0.0102, 1.13, 1.10, 1.72, 0.195), strict=True)
)
_OFFSETS = tuple(
    (
        minutes * 60,
        f"{'+' if minutes >= 0 else '-'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}",
    )
    for minutes in (600, 600, 600, 660, 570, 480, 480, 330, 0, 60, -300, -480, 720, 780, -600)
)
_TRICKY = ('pop-up, "Spring Fair"', 'kiosk "B", level 2')
_PLACES = (2,) * 12 + (0, 0, 1, 1, 3, 4, 4, 4)
_TEN = tuple(10**p for p in range(5))
_STORES = tuple(f"S{n:03d}" for n in range(1, 61))
_CHANNELS = ("store",) * 25 + ("online",) * 17 + ("phone",) * 6 + _TRICKY
_WORDS = ("red", "blue", "green", "promo", "gift", "member", "staff", "bulk", "web", "")
_CATEGORIES = _words(
    "Audio Baby Bags Bakery Bath Beauty Bedding Bikes Books Camping Cleaning Coffee Computers "
    "Cookware Crafts Dairy Décor Drinks Footwear Frozen Furniture Games Garden Gifts Hardware "
    "Health Jewellery Kids Kitchen Lighting Luggage Music Office Outdoor Pantry Party Pets Phones "
    "Pharmacy Produce Seafood Shoes Snacks Sport Stationery Tea Tools Toys Travel Wine"
)
_FIRST = _words(
    "Olivia Jack Zoë Noah Aroha Liam Mei José Siobhán Ava Wei Isla Oliver Priya Mateo Grace Kai "
    "Léa Tom Amira"
)
_LAST = _words(
    "Smith Nguyen O'Brien Williams Brown Chen Taylor Singh Müller Wilson García Kelly Tane Rossi "
    "Martin Lee Walker Ng"
)
_COUNTRIES = ("AU",) * 12 + ("NZ", "NZ", "US", "GB", "SG", "JP", "DE", "CA")
_ADJECTIVES = ("Classic", "Compact", "Deluxe", "Eco", "Mini", "Organic", "Pro", "Smart", "Ultra")
_NOUNS = ("Blender", "Candle", "Chair", "Kettle", "Lamp", "Mug", "Pillow", "Speaker", "Towel")
_SCHEMA = """
CREATE TABLE customers (customer_id TEXT PRIMARY KEY, name TEXT, email TEXT, country TEXT,
                        segment TEXT, updated_at TIMESTAMP);
CREATE TABLE products (sku TEXT PRIMARY KEY, name TEXT, category TEXT, updated_at TIMESTAMP);
CREATE TABLE fx_rates (currency TEXT, day DATE, rate_to_aud NUMERIC, updated_at TIMESTAMP,
                       PRIMARY KEY (currency, day));
"""
_BAD_VALUES = {
    "empty_txn_id": (0, ""),
    "bad_sold_at": (1, "2026-13-45"),
    "bad_quantity": (5, "1.5"),
    "bad_unit_price": (6, "1.23456"),
    "bad_currency": (7, "US"),
}
BAD_KINDS = ("field_count", *_BAD_VALUES, "duplicate_txn_id")


@dataclass(frozen=True)
class Scale:
    """How much data :func:`generate` writes, over which days, and with which quirks.

    ``days`` counts the days of sales and fx rates up to and including ``end``.
    ``bad_rows`` puts one row of each kind in :data:`BAD_KINDS` in every region
    file; ``quirks`` adds a ``channel`` column with quoted commas and quotes to
    the first region, CRLF line ends to the last, and a few lower-case fx codes.
    """

    sales: int = 20_000
    regions: tuple[str, ...] = ("north", "south", "east", "west")
    customers: int = 2_000
    products: int = 300
    days: int = 90
    end: date = date(2026, 11, 1)
    bad_rows: bool = True
    seed: int = 7
    quirks: bool = True

    def __post_init__(self) -> None:
        if not self.regions or len(set(self.regions)) != len(self.regions):
            raise ValueError(f"regions must be distinct and not empty: {self.regions}")
        for region in self.regions:
            _check_region(region)
        if self.sales < 0 or self.days < 1:
            raise ValueError("sales must be >= 0 and days >= 1")
        if not (1 <= self.customers < 900_000 and 1 <= self.products < 90_000):
            raise ValueError("customers must be in 1..899999 and products in 1..89999")

    @classmethod
    def quick(cls, seed: int = 7) -> Scale:
        """A small directory for demos and tests: 2,000 sales over 30 days."""
        return cls(sales=2_000, customers=200, products=50, days=30, seed=seed)

    @classmethod
    def bench(cls, seed: int = 7) -> Scale:
        """The benchmark directory: 1,000,000 sales over three years."""
        return cls(sales=1_000_000, customers=100_000, products=10_000, days=3 * 365, seed=seed)

    @property
    def first_day(self) -> date:
        """The first day of the range."""
        return self.end - timedelta(days=self.days - 1)


@dataclass(frozen=True)
class _Catalog:
    """What new sales rows may refer to: customers, skus and the day range."""

    customers: list[str]
    skus: list[str]
    first_day: date
    days: int


@cache
def _clock() -> tuple[str, ...]:
    """``HH:MM:SS`` for every second of a day, so rows need no datetime objects."""
    return tuple(
        f"{h:02d}:{m:02d}:{s:02d}" for h in range(24) for m in range(60) for s in range(60)
    )


class _Maker:
    """Draws the field values of sales rows from one rng and a catalog."""

    def __init__(self, rng: random.Random, catalog: _Catalog) -> None:
        self.rng = rng
        self.catalog = catalog
        first = catalog.first_day
        self._days = [(first + timedelta(days=d)).isoformat() for d in range(-1, catalog.days + 1)]
        self._span = catalog.days * 86_400

    def row(self, txn_id: str) -> list[str]:
        """One valid row in :data:`HEADER` order."""
        rnd = self.rng.random
        return [
            txn_id,
            self.sold_at(),
            _STORES[int(rnd() * len(_STORES))],
            self.customer_id(),
            self.sku(),
            self.quantity(),
            self.unit_price(),
            self.currency(),
        ]

    def sold_at(self) -> str:
        """An instant in the day range, written in one of the four legal forms."""
        rnd = self.rng.random
        clock = _clock()
        t = int(rnd() * self._span) + 86_400
        form = rnd()
        if form < 0.80:
            offset, suffix = _OFFSETS[int(rnd() * len(_OFFSETS))]
            day, second = divmod(t + offset, 86_400)
            return f"{self._days[day]}T{clock[second]}{suffix}"
        day, second = divmod(t, 86_400)
        if form < 0.90:
            return f"{self._days[day]} {clock[second]}"
        if form < 0.98:
            return f"{self._days[day]}T{clock[second]}Z"
        return self._days[day]

    def customer_id(self) -> str:
        """A known customer mostly, ~2% unknown, ~3% empty."""
        rnd = self.rng.random
        r = rnd()
        known = self.catalog.customers
        if r < 0.03:
            return ""
        if r < 0.05 or not known:
            return f"C{900_000 + int(rnd() * 100_000):06d}"
        return known[int(rnd() * len(known))]

    def sku(self) -> str:
        """A known sku mostly, ~1% unknown, ~1% empty."""
        rnd = self.rng.random
        r = rnd()
        known = self.catalog.skus
        if r < 0.01:
            return ""
        if r < 0.02 or not known:
            return f"SKU{90_000 + int(rnd() * 10_000):05d}"
        return known[int(rnd() * len(known))]

    def quantity(self) -> str:
        """1..10, small ones likelier; ~2% returns (-1..-3)."""
        rnd = self.rng.random
        if rnd() < 0.02:
            return str(-1 - int(rnd() * 3))
        return str(1 + int(rnd() ** 2 * 10))

    def unit_price(self) -> str:
        """0.50..500 with 0 to 4 decimal places (``12.5``, ``3.9900``, ``100``)."""
        rnd = self.rng.random
        units = int(5_000 * 1_000 ** rnd())
        places = _PLACES[int(rnd() * len(_PLACES))]
        q = units // _TEN[4 - places]
        if places == 0:
            return str(max(q, 1))
        return f"{q // _TEN[places]}.{q % _TEN[places]:0{places}d}"

    def currency(self) -> str:
        """AUD mostly, else one of the other nine; a few in lower or title case."""
        rnd = self.rng.random
        r = rnd()
        code = "AUD" if r < 0.7 else _FOREIGN[min(int((r - 0.7) / 0.3 * 9), 8)]
        case = rnd()
        if case < 0.02:
            return code.lower()
        return code.title() if case < 0.03 else code

    def text(self, column: str) -> str:
        """A value for an extra text column."""
        pool = _CHANNELS if column == "channel" else _WORDS
        return pool[int(self.rng.random() * len(pool))]


@dataclass(frozen=True)
class _Layout:
    """Where the known columns sit in one file's header."""

    header: list[str]
    index: dict[str, int]

    @classmethod
    def of(cls, header: list[str]) -> _Layout:
        """The layout of ``header``; it must hold every column of :data:`HEADER`."""
        missing = set(HEADER) - set(header)
        if missing:
            raise ValueError(f"sales header lacks {sorted(missing)}")
        return cls(header, {name: header.index(name) for name in HEADER})

    def clean(self, row: list[str]) -> bool:
        """Whether ``row`` is none of the deliberate rejects (a duplicate id aside)."""
        ix = self.index
        if len(row) != len(self.header) or not row[ix["txn_id"]]:
            return False
        try:
            datetime.fromisoformat(row[ix["sold_at"]])
        except ValueError:
            return False
        return (
            _INT.fullmatch(row[ix["quantity"]]) is not None
            and _PRICE.fullmatch(row[ix["unit_price"]]) is not None
            and row[ix["currency"]].upper() in _CURRENCY_SET
        )

    def arrange(self, row: list[str], maker: _Maker) -> list[str]:
        """A :data:`HEADER`-ordered row laid out for this header, extras filled in."""
        return [row[_POS[c]] if c in _POS else maker.text(c) for c in self.header]


def _check_region(region: str) -> None:
    if not _REGION.fullmatch(region):
        raise ValueError(f"region must match [A-Za-z0-9_]+: {region!r}")


def _rng(rng: random.Random | int) -> random.Random:
    return rng if isinstance(rng, random.Random) else random.Random(rng)


def _sub(seed: int, label: str) -> random.Random:
    """An rng of its own for one part, so that parts do not shift each other."""
    return random.Random(f"{seed}:{label}")


def stamp(now: datetime) -> str:
    """``now`` as stored in ``updated_at``: UTC text, rounded up so never before ``now``."""
    utc = now.astimezone(UTC).replace(tzinfo=None) if now.tzinfo else now
    if utc.microsecond:
        utc = utc.replace(microsecond=0) + timedelta(seconds=1)
    return utc.isoformat(sep=" ", timespec="seconds")


def sales_files(data_dir: Path) -> dict[str, Path]:
    """The region files of a directory, by region, in region order."""
    found = {}
    for path in data_dir.iterdir():
        match = _SALES_FILE.fullmatch(path.name)
        if match and path.is_file():
            found[match.group(1)] = path
    return dict(sorted(found.items()))


def _region_sizes(total: int, regions: int) -> list[int]:
    base, extra = divmod(total, regions)
    return [base + (1 if i < extra else 0) for i in range(regions)]


# ---------------------------------------------------------------- generation


def generate(data_dir: Path, scale: Scale) -> None:
    """Write a whole data directory for ``scale``, replacing any sales files and shop.db."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for old in [*sales_files(data_dir).values(), *data_dir.glob(SHOP_DB + "*")]:
        old.unlink()
    catalog = _Catalog(
        [f"C{n:06d}" for n in range(1, scale.customers + 1)],
        [f"SKU{n:05d}" for n in range(1, scale.products + 1)],
        scale.first_day,
        scale.days,
    )
    _write_shop(data_dir / SHOP_DB, scale, catalog)
    sizes = _region_sizes(scale.sales, len(scale.regions))
    last = len(scale.regions) - 1
    for i, (region, rows) in enumerate(zip(scale.regions, sizes, strict=True)):
        maker = _Maker(_sub(scale.seed, f"sales:{region}"), catalog)
        _write_region(
            data_dir / f"sales_{region}.csv",
            maker,
            region[0].upper(),
            rows,
            bad=scale.bad_rows,
            channel=scale.quirks and i == 0,
            crlf=scale.quirks and i == last,
        )


def _write_region(
    path: Path, maker: _Maker, prefix: str, rows: int, *, bad: bool, channel: bool, crlf: bool
) -> None:
    spoilt = _bad_positions(maker.rng, rows) if bad else {}
    header = [*HEADER, "channel"] if channel else list(HEADER)
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out, lineterminator="\r\n" if crlf else "\n")
        writer.writerow(header)
        writer.writerows(_region_rows(maker, prefix, rows, spoilt, channel))


def _bad_positions(rng: random.Random, rows: int) -> dict[int, str]:
    """Even row positions for the rejects, so the row before each one is a good row."""
    slots = range(1, rows // 2)
    picks = rng.sample(slots, min(len(BAD_KINDS), len(slots)))
    return {2 * slot: kind for slot, kind in zip(picks, BAD_KINDS, strict=False)}


def _region_rows(
    maker: _Maker, prefix: str, rows: int, spoilt: dict[int, str], channel: bool
) -> Iterator[list[str]]:
    for i in range(rows):
        row = maker.row(f"{prefix}-{i + 1:06d}")
        if channel:
            row.append(maker.text("channel"))
        kind = spoilt.get(i)
        yield row if kind is None else _spoil(row, kind, f"{prefix}-{i:06d}")


def _spoil(row: list[str], kind: str, previous_id: str) -> list[str]:
    """``row`` made into a reject of ``kind``; a duplicate takes the previous row's id."""
    if kind == "field_count":
        return row[:-1]
    column, value = _BAD_VALUES.get(kind, (0, previous_id))
    return [value if i == column else v for i, v in enumerate(row)]


def _write_shop(path: Path, scale: Scale, catalog: _Catalog) -> None:
    with _connect(path) as con:
        con.executescript(_SCHEMA)
        con.execute("BEGIN")
        con.executemany(
            "INSERT INTO customers VALUES (?, ?, ?, ?, ?, ?)",
            _customer_rows(_sub(scale.seed, "customers"), catalog),
        )
        con.executemany(
            "INSERT INTO products VALUES (?, ?, ?, ?)",
            _product_rows(_sub(scale.seed, "products"), catalog),
        )
        con.executemany(
            "INSERT INTO fx_rates VALUES (?, ?, ?, ?)",
            _fx_rows(_sub(scale.seed, "fx"), catalog, scale.quirks),
        )
        con.execute("COMMIT")


@contextlib.contextmanager
def _connect(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection in autocommit mode (transactions are explicit), closed afterwards."""
    con = sqlite3.connect(path, isolation_level=None)
    try:
        yield con
    finally:
        if con.in_transaction:
            con.execute("ROLLBACK")
        con.close()


def _run(con: sqlite3.Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
    """``executemany`` in one transaction."""
    con.execute("BEGIN")
    con.executemany(sql, rows)
    con.execute("COMMIT")


def _past(rng: random.Random, catalog: _Catalog) -> str:
    """An ``updated_at`` within the year before the range or the range itself."""
    day = catalog.first_day + timedelta(days=rng.randrange(-365, catalog.days))
    return f"{day.isoformat()} {_clock()[rng.randrange(86_400)]}"


def _customer_rows(
    rng: random.Random, catalog: _Catalog
) -> Iterator[tuple[str, str, str, str, str | None, str]]:
    for n, cid in enumerate(catalog.customers, 1):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        email = f"{first}.{last}{n}@example.com".lower().replace("'", "")
        segment = None if rng.random() < 0.01 else rng.choice(SEGMENTS)
        yield cid, f"{first} {last}", email, rng.choice(_COUNTRIES), segment, _past(rng, catalog)


def _categories(products: int) -> tuple[str, ...]:
    """20 to 50 categories, more for bigger catalogues."""
    return _CATEGORIES[: min(50, max(20, products // 20))]


def _product_rows(
    rng: random.Random, catalog: _Catalog
) -> Iterator[tuple[str, str, str | None, str]]:
    categories = _categories(len(catalog.skus))
    for sku in catalog.skus:
        name = f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)} {sku[-3:]}"
        category = None if rng.random() < 0.01 else rng.choice(categories)
        yield sku, name, category, _past(rng, catalog)


def _fx_rows(
    rng: random.Random, catalog: _Catalog, quirks: bool
) -> list[tuple[str, str, float, str]]:
    """A random walk per currency, ~1% of days missing (never the first or last day)."""
    rows = []
    for code in _FOREIGN:
        rate = _BASE_RATES[code]
        for d in range(catalog.days):
            rate *= math.exp(rng.gauss(0.0, 0.004))
            if 0 < d < catalog.days - 1 and rng.random() < 0.01:
                continue
            day = (catalog.first_day + timedelta(days=d)).isoformat()
            rows.append((code, day, round(rate, 6), _fx_stamp(rng, day)))
    for i in rng.sample(range(len(rows)), min(3, len(rows)) if quirks else 0):
        code, day, rate, updated = rows[i]
        rows[i] = (code.lower(), day, rate, updated)
    return rows


def _fx_stamp(rng: random.Random, day: str) -> str:
    """Rates are published in the afternoon or evening (UTC) of their day."""
    return f"{day} {_clock()[57_600 + rng.randrange(28_800)]}"


# ------------------------------------------------------------ sales changes


def _catalog(data_dir: Path) -> _Catalog:
    """Customers, skus and the fx day range as they are now in shop.db."""
    with _open(data_dir) as con:
        customers = [r[0] for r in con.execute("SELECT customer_id FROM customers ORDER BY 1")]
        skus = [r[0] for r in con.execute("SELECT sku FROM products ORDER BY 1")]
        first, last = con.execute("SELECT MIN(day), MAX(day) FROM fx_rates").fetchone()
    first_day, last_day = date.fromisoformat(first), date.fromisoformat(last)
    return _Catalog(customers, skus, first_day, (last_day - first_day).days + 1)


def _line_end(path: Path) -> str:
    with path.open("rb") as f:
        return "\r\n" if f.readline().endswith(b"\r\n") else "\n"


def _rows(path: Path) -> Iterator[list[str]]:
    """The rows of a csv file, header first, read lazily."""
    with path.open(newline="", encoding="utf-8") as f:
        yield from csv.reader(f)


def _layout(path: Path) -> _Layout:
    return _Layout.of(next(_rows(path)))


def _rewrite(
    path: Path,
    row_fn: Callable[[int, list[str]], list[str] | None],
    header_fn: Callable[[list[str]], list[str]] | None = None,
) -> None:
    """Stream ``path`` through ``row_fn`` (row number, row -> new row, or None to drop it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    rows = _rows(path)
    header = next(rows)
    try:
        with tmp.open("w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out, lineterminator=_line_end(path))
            writer.writerow(header_fn(header) if header_fn else header)
            writer.writerows(r for i, row in enumerate(rows) if (r := row_fn(i, row)) is not None)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _different(make: Callable[[], str], old: str) -> str:
    new = make()
    while new == old:
        new = make()
    return new


def _edit_row(row: list[str], layout: _Layout, maker: _Maker, counts: dict[str, int]) -> list[str]:
    """``row`` with one or two of :data:`EDITABLE` set to new values."""
    makers: dict[str, Callable[[], str]] = {
        "quantity": maker.quantity,
        "unit_price": maker.unit_price,
        "customer_id": maker.customer_id,
        "sku": maker.sku,
        "sold_at": maker.sold_at,
    }
    new = list(row)
    for name in maker.rng.sample(EDITABLE, 1 if maker.rng.random() < 0.7 else 2):
        i = layout.index[name]
        new[i] = _different(makers[name], row[i])
        counts[name] += 1
    return new


def _edit_file(path: Path, fraction: float, maker: _Maker, counts: dict[str, int]) -> list[str]:
    layout, edited = _layout(path), []
    txn = layout.index["txn_id"]

    def edit(_: int, row: list[str]) -> list[str]:
        if maker.rng.random() >= fraction or not layout.clean(row):
            return row
        edited.append(row[txn])
        return _edit_row(row, layout, maker, counts)

    _rewrite(path, edit)
    return edited


def edit_sales(data_dir: Path, fraction: float, rng: random.Random | int) -> dict[str, Any]:
    """Edit about ``fraction`` of the good rows of every region file, keeping txn_ids,
    row order and the rejects. Each edit sets one or two of :data:`EDITABLE` anew.

    Returns ``edited`` (rows), ``fields`` (edits per field) and ``ids`` (txn_ids by region).
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1]: {fraction}")
    maker = _Maker(_rng(rng), _catalog(data_dir))
    counts = dict.fromkeys(EDITABLE, 0)
    ids = {r: _edit_file(p, fraction, maker, counts) for r, p in sales_files(data_dir).items()}
    return {"edited": sum(map(len, ids.values())), "fields": counts, "ids": ids}


def _eligible(path: Path) -> bytearray:
    """One flag per data row: set for a good row whose txn_id occurs once in the file."""
    rows = _rows(path)
    layout = _Layout.of(next(rows))
    txn = layout.index["txn_id"]
    flags = bytearray()
    first: dict[str, int] = {}
    for i, row in enumerate(rows):
        flags.append(layout.clean(row))
        tid = row[txn] if len(row) > txn else ""
        if tid in first:
            flags[first[tid]] = flags[i] = 0
        elif tid:
            first[tid] = i
    return flags


def _pick_rows(data_dir: Path, count: int, rng: random.Random) -> dict[str, set[int]]:
    """``count`` eligible rows chosen across all region files, as row numbers by region."""
    rows = {
        r: [i for i, f in enumerate(_eligible(p)) if f] for r, p in sales_files(data_dir).items()
    }
    total = sum(map(len, rows.values()))
    if not 0 <= count <= total:
        raise ValueError(f"cannot pick {count} of {total} rows")
    chosen, base, picked = sorted(rng.sample(range(total), count)), 0, {}
    for region, eligible in rows.items():
        picked[region] = {eligible[k - base] for k in chosen if base <= k < base + len(eligible)}
        base += len(eligible)
    return picked


def _change_rows(
    path: Path, rows: set[int], change: Callable[[_Layout, list[str]], list[str] | None]
) -> list[str]:
    """Apply ``change`` to the given row numbers of ``path``; their txn_ids."""
    layout, touched = _layout(path), []

    def apply(i: int, row: list[str]) -> list[str] | None:
        if i not in rows:
            return row
        touched.append(row[layout.index["txn_id"]])
        return change(layout, row)

    _rewrite(path, apply)
    return touched


def delete_sales(data_dir: Path, count: int, rng: random.Random | int) -> dict[str, Any]:
    """Delete exactly ``count`` good rows chosen across all region files.

    Returns ``deleted`` and ``ids`` (txn_ids by region).
    """
    files = sales_files(data_dir)
    ids = {
        region: _change_rows(files[region], rows, lambda _layout, _row: None) if rows else []
        for region, rows in _pick_rows(data_dir, count, _rng(rng)).items()
    }
    return {"deleted": count, "ids": ids}


def _last_id(path: Path, region: str) -> tuple[str, int]:
    """The txn_id prefix of a file and the highest number after it."""
    rows = _rows(path)
    txn = _Layout.of(next(rows)).index["txn_id"]
    prefix, top = region[0].upper(), 0
    for row in rows:
        match = _TXN.fullmatch(row[txn]) if len(row) > txn else None
        if match and int(match.group(2)) > top:
            prefix, top = match.group(1), int(match.group(2))
    return prefix, top


def _append(path: Path, rows: Iterable[list[str]]) -> None:
    end = _line_end(path)
    with path.open("a", newline="", encoding="utf-8") as out:
        csv.writer(out, lineterminator=end).writerows(rows)


def insert_sales(data_dir: Path, count: int, rng: random.Random | int) -> dict[str, Any]:
    """Append ``count`` new good rows, with new txn_ids, to randomly chosen region files.

    Returns ``inserted`` and ``ids`` (txn_ids by region).
    """
    maker = _Maker(_rng(rng), _catalog(data_dir))
    files = sales_files(data_dir)
    regions = [maker.rng.choice(list(files)) for _ in range(count)]
    ids: dict[str, list[str]] = {}
    for region, path in files.items():
        prefix, top = _last_id(path, region)
        new = [f"{prefix}-{top + k:06d}" for k in range(1, regions.count(region) + 1)]
        layout = _layout(path)
        _append(path, (layout.arrange(maker.row(tid), maker) for tid in new))
        ids[region] = new
    return {"inserted": count, "ids": ids}


def add_region(data_dir: Path, region: str, rows: int, rng: random.Random | int) -> dict[str, Any]:
    """Write a new region file of ``rows`` good rows (no rejects, no quirks)."""
    _check_region(region)
    path = data_dir / f"sales_{region}.csv"
    if path.exists():
        raise FileExistsError(path)
    maker = _Maker(_rng(rng), _catalog(data_dir))
    _write_region(path, maker, region[0].upper(), rows, bad=False, channel=False, crlf=False)
    return {"region": region, "rows": rows, "file": path.name}


def add_column(data_dir: Path, region: str, name: str, rng: random.Random | int) -> dict[str, Any]:
    """Add an extra text column ``name`` at the end of one region file, filled in every row."""
    path = sales_files(data_dir)[region]
    if name in _layout(path).header or not name:
        raise ValueError(f"{path.name} already has a column {name!r}")
    maker = _Maker(_rng(rng), _catalog(data_dir))
    counter = [0]

    def extend(_: int, row: list[str]) -> list[str]:
        counter[0] += 1
        return [*row, maker.text(name)]

    _rewrite(path, extend, lambda header: [*header, name])
    return {"region": region, "column": name, "rows": counter[0]}


def _utc_day(sold_at: str) -> date:
    moment = datetime.fromisoformat(sold_at)
    return (moment.astimezone(UTC) if moment.tzinfo else moment).date()


def move_sale(data_dir: Path, rng: random.Random | int) -> dict[str, Any]:
    """Move one good sale to another (UTC) day and another known product.

    Returns ``region``, ``txn_id`` and the old and new ``sold_at`` and ``sku``.
    """
    maker = _Maker(_rng(rng), _catalog(data_dir))
    if len(maker.catalog.skus) < 2 or maker.catalog.days < 2:
        raise ValueError("moving a sale needs two products and two days")
    region, rows = next((r, s) for r, s in _pick_rows(data_dir, 1, maker.rng).items() if s)
    info: dict[str, Any] = {"region": region}

    def move(layout: _Layout, row: list[str]) -> list[str]:
        at, sku = layout.index["sold_at"], layout.index["sku"]
        new = list(row)
        while _utc_day(new[at]) == _utc_day(row[at]):
            new[at] = maker.sold_at()
        new[sku] = _different(lambda: maker.rng.choice(maker.catalog.skus), row[sku])
        info.update(old_sold_at=row[at], sold_at=new[at], old_sku=row[sku], sku=new[sku])
        return new

    info["txn_id"] = _change_rows(sales_files(data_dir)[region], rows, move)[0]
    return info


# ------------------------------------------------------------- shop changes


def _open(data_dir: Path) -> contextlib.AbstractContextManager[sqlite3.Connection]:
    path = data_dir / SHOP_DB
    if not path.is_file():
        raise FileNotFoundError(path)
    return _connect(path)


def _pick(rng: random.Random, items: list[Any], count: int, what: str) -> list[Any]:
    if not 0 <= count <= len(items):
        raise ValueError(f"cannot pick {count} of {len(items)} {what}")
    return rng.sample(items, count)


def _nudge(rng: random.Random, rate: float) -> float:
    """A rate 0.1% to 2% away from ``rate``, rounded to 6 places, never equal to it."""
    new = rate
    while new == rate:
        new = round(rate * (1 + rng.choice((-1, 1)) * rng.uniform(0.001, 0.02)), 6)
    return new


def correct_fx(
    data_dir: Path, count: int, rng: random.Random | int, now: datetime
) -> dict[str, Any]:
    """Change ``rate_to_aud`` of ``count`` existing fx rows, stamping them ``now``.

    Returns ``corrected`` and ``keys`` ((currency, day) pairs).
    """
    r = _rng(rng)
    with _open(data_dir) as con:
        rows = con.execute("SELECT currency, day, rate_to_aud FROM fx_rates ORDER BY 1, 2")
        picked = _pick(r, rows.fetchall(), count, "fx rates")
        changes = [(_nudge(r, rate), stamp(now), code, day) for code, day, rate in picked]
        sql = "UPDATE fx_rates SET rate_to_aud = ?, updated_at = ? WHERE currency = ? AND day = ?"
        _run(con, sql, changes)
    return {"corrected": count, "keys": [(code, day) for code, day, _ in picked]}


def _near_rate(rates: dict[tuple[str, str], float], code: str, day: str, span: int) -> float:
    """The rate of the nearest day of ``code`` that has one."""
    at = date.fromisoformat(day)
    for k in range(1, span + 1):
        for near in (at - timedelta(days=k), at + timedelta(days=k)):
            if (code, near.isoformat()) in rates:
                return rates[code, near.isoformat()]
    return _BASE_RATES.get(code, 1.0)


def _days_between(first: str, last: str) -> list[str]:
    start, stop = date.fromisoformat(first), date.fromisoformat(last)
    return [(start + timedelta(days=d)).isoformat() for d in range((stop - start).days + 1)]


def fill_fx_gaps(
    data_dir: Path, count: int, rng: random.Random | int, now: datetime
) -> dict[str, Any]:
    """Insert rates for up to ``count`` missing (currency, day) pairs, stamped ``now``.

    Returns ``inserted`` and ``keys``; fewer than ``count`` if there are fewer gaps.
    """
    r = _rng(rng)
    with _open(data_dir) as con:
        rows = con.execute("SELECT UPPER(currency), day, rate_to_aud FROM fx_rates ORDER BY 1, 2")
        rates = {(code, day): rate for code, day, rate in rows}
        days = _days_between(min(d for _, d in rates), max(d for _, d in rates))
        gaps = [(c, d) for c in sorted({c for c, _ in rates}) for d in days if (c, d) not in rates]
        picked = sorted(_pick(r, gaps, min(count, len(gaps)), "gaps"))
        new = [(c, d, _nudge(r, _near_rate(rates, c, d, len(days))), stamp(now)) for c, d in picked]
        _run(con, "INSERT INTO fx_rates VALUES (?, ?, ?, ?)", new)
    return {"inserted": len(new), "keys": picked}


def _new_choice(rng: random.Random, choices: Sequence[str], old: str | None) -> str:
    return _different(lambda: rng.choice(choices), old or "")


def change_segments(
    data_dir: Path, count: int, rng: random.Random | int, now: datetime
) -> dict[str, Any]:
    """Give ``count`` customers another segment, stamping them ``now``.

    Returns ``changed`` and ``ids``.
    """
    r = _rng(rng)
    with _open(data_dir) as con:
        rows = con.execute("SELECT customer_id, segment FROM customers ORDER BY 1").fetchall()
        picked = _pick(r, rows, count, "customers")
        new = [(_new_choice(r, SEGMENTS, seg), stamp(now), cid) for cid, seg in picked]
        _run(con, "UPDATE customers SET segment = ?, updated_at = ? WHERE customer_id = ?", new)
    return {"changed": count, "ids": [cid for cid, _ in picked]}


def recategorise_products(
    data_dir: Path, count: int, rng: random.Random | int, now: datetime
) -> dict[str, Any]:
    """Move ``count`` products to another existing category, stamping them ``now``.

    Returns ``changed`` and ``skus``.
    """
    r = _rng(rng)
    with _open(data_dir) as con:
        rows = con.execute("SELECT sku, category FROM products ORDER BY 1").fetchall()
        known = sorted({cat for _, cat in rows if cat is not None})
        categories = known if len(known) >= 2 else list(_categories(0))
        picked = _pick(r, rows, count, "products")
        new = [(_new_choice(r, categories, cat), stamp(now), sku) for sku, cat in picked]
        _run(con, "UPDATE products SET category = ?, updated_at = ? WHERE sku = ?", new)
    return {"changed": count, "skus": [sku for sku, _ in picked]}


def delete_customers(data_dir: Path, count: int, rng: random.Random | int) -> dict[str, Any]:
    """Delete ``count`` customers; their sales now refer to unknown ids.

    Returns ``deleted`` and ``ids``.
    """
    r = _rng(rng)
    with _open(data_dir) as con:
        ids = [row[0] for row in con.execute("SELECT customer_id FROM customers ORDER BY 1")]
        picked = _pick(r, ids, count, "customers")
        _run(con, "DELETE FROM customers WHERE customer_id = ?", [(cid,) for cid in picked])
    return {"deleted": count, "ids": picked}
