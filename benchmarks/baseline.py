"""The sales warehouse rebuilt the way teams do it without the loader: truncate, reload, rebuild.

This is the baseline of ``python -m benchmarks``: it reads the same data directory as
``sales.nightly`` (``sales_<region>.csv`` files and the shop database ``shop.db``) and builds
the same outputs (``sales`` with its derived columns, ``daily_sales``, ``customer_summary``)
from scratch, in one transaction:

1. **load**: truncate plain staging tables and reload every region file into them. On
   PostgreSQL with ``COPY ... FROM STDIN (FORMAT csv)`` through psycopg's ``cursor.copy``; on
   SQLite with ``executemany`` of ``csv.reader`` rows. Nothing is parsed in Python except what
   SQL cannot do: a ``COPY`` fails on a record whose field count differs from the header's, so
   on PostgreSQL a byte-level pre-filter drops those records first (only lines with a quote or
   a wrong comma count are parsed, with the ``csv`` module).
2. **shop**: copy ``customers``, ``products`` and ``fx_rates`` from ``shop.db`` (PostgreSQL:
   rows read with ``sqlite3`` and written with ``COPY``; SQLite: ``ATTACH`` and
   ``INSERT ... SELECT``).
3. **rebuild**: one SQL script: validate and type the staged text (regular expressions,
   casts; timestamps with offsets are cast in SQL), keep the first row of a duplicated key,
   derive the columns with joins to the shop tables, and aggregate.

What it does not do (on purpose, it is the "no framework" way): it records no rejects, runs no
quality rules (no ``exceptions``), keeps no change history, no run history, no watermarks, and
its checks of the reject rules are approximations of the spec (a regular expression for a
timestamp, a date like February 30 is not caught; ``round`` half-even is exact on PostgreSQL
but floating point on SQLite). On data whose only bad rows are the generator's, it keeps
exactly the rows the loader keeps, which ``python -m benchmarks`` checks after every run.

Run alone: ``python -m benchmarks.baseline --url URL --data-dir DIR [--schema S]``; it prints
one JSON line with its seconds (total and per step), its row counts and its peak RSS.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import resource
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import sql

SALES_FILE = re.compile(r"sales_([A-Za-z0-9_]+)\.csv")
HEADER = ("txn_id", "sold_at", "store_id", "customer_id", "sku", "quantity", "unit_price",
          "currency")
DERIVED = ("sold_on", "amount", "rate_to_aud", "amount_aud", "customer_segment", "category")
SHOP = {
    "customers": ("customer_id", "name", "email", "country", "segment", "updated_at"),
    "products": ("sku", "name", "category", "updated_at"),
    "fx_rates": ("currency", "day", "rate_to_aud", "updated_at"),
}
CHUNK = 1 << 20
LIMITATIONS = (
    "The baseline records no rejects (it drops bad rows), runs no quality rules (no "
    "`exceptions`), keeps no change or run history and no watermarks, and checks the reject "
    "rules approximately (regular expressions and SQL casts instead of `isoparse`; on SQLite "
    "the money columns are floating point, so `amount_aud` is not rounded half-even exactly)."
)


def region_files(data_dir: Path) -> dict[str, Path]:
    """The region files of a directory by (lower-case) region, in region order."""
    found: dict[str, Path] = {}
    for path in sorted(data_dir.iterdir()):
        match = SALES_FILE.fullmatch(path.name)
        if match and path.is_file():
            found[match.group(1).lower()] = path
    return found


def read_header(path: Path) -> list[str]:
    """The stripped header names of a region file (BOM allowed)."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f), [])
    names = [name.strip() for name in header]
    missing = [name for name in HEADER if name not in names]
    if missing:
        raise ValueError(f"{path.name}: header lacks {', '.join(missing)}")
    return names


def extras_of(headers: dict[str, list[str]]) -> list[str]:
    """The extra columns of all files, in first-seen order."""
    extras: list[str] = []
    for names in headers.values():
        extras += [n for n in names if n not in HEADER and n not in extras]
    return extras


def keep_records(data: bytes, fields: int) -> tuple[bytes, int]:
    """``data`` without the records whose field count is not ``fields`` (nor blank lines).

    The header (line 1) is always kept. Only lines with a quote or a wrong comma count are
    parsed; a quoted field may span lines. Returns the bytes to COPY and how many records
    were dropped.
    """
    lines = data.split(b"\n")
    last = len(lines) - 1 if lines[-1] == b"" else len(lines)
    commas = fields - 1
    suspects = [i for i in range(1, last)
                if lines[i].count(b",") != commas or b'"' in lines[i]]
    drop: list[int] = []
    dropped = 0
    done = 1
    for i in suspects:
        if i < done:
            continue
        j, record = i, lines[i]
        while record.count(b'"') % 2 and j + 1 < last:
            j += 1
            record += b"\n" + lines[j]
        done = j + 1
        if not record.strip(b"\r\n\t "):
            drop.append(i)
            continue
        parsed = next(csv.reader([record.decode("utf-8").rstrip("\r")]), [])
        if len(parsed) != fields:
            drop.extend(range(i, j + 1))
            dropped += 1
    if not drop:
        return data, 0
    gone = set(drop)
    return b"\n".join(line for i, line in enumerate(lines) if i not in gone), dropped


# --------------------------------------------------------------------------- PostgreSQL

PG_SETUP = """
CREATE TABLE IF NOT EXISTS stg_sales (
    line_no bigint GENERATED ALWAYS AS IDENTITY, region text,
    txn_id text, sold_at text, store_id text, customer_id text, sku text,
    quantity text, unit_price text, currency text);
CREATE TABLE IF NOT EXISTS customers (customer_id text, name text, email text, country text,
                                      segment text, updated_at timestamp);
CREATE TABLE IF NOT EXISTS products (sku text, name text, category text, updated_at timestamp);
CREATE TABLE IF NOT EXISTS fx_rates (currency text, day date, rate_to_aud numeric,
                                     updated_at timestamp);
"""

TS_PATTERN = (r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
              r"([T ]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?"
              r"(Z|[+-][0-9]{2}(:?[0-9]{2})?)?)?$")

PG_REBUILD = """
DROP TABLE IF EXISTS sales, daily_sales, customer_summary;

CREATE TABLE sales AS
WITH stripped AS (
    SELECT line_no, region, btrim(txn_id) AS txn_id, btrim(sold_at) AS sold_at,
           nullif(btrim(store_id), '') AS store_id, nullif(btrim(customer_id), '') AS customer_id,
           nullif(btrim(sku), '') AS sku, btrim(quantity) AS quantity,
           btrim(unit_price) AS unit_price, btrim(currency) AS currency{extras_stripped}
    FROM stg_sales
), valid AS (
    SELECT DISTINCT ON (region, txn_id) *
    FROM stripped
    WHERE txn_id <> ''
      AND sold_at ~ '{ts_pattern}'
      AND quantity ~ '^[+-]?[0-9]{{1,18}}$'
      AND unit_price ~ '^[+-]?[0-9]{{1,14}}(\\.[0-9]{{1,4}})?$'
      AND currency ~ '^[A-Za-z]{{3}}$'
    ORDER BY region, txn_id, line_no
), typed AS (
    SELECT region, txn_id, (sold_at::timestamptz AT TIME ZONE 'UTC') AS sold_at, store_id,
           customer_id, sku, quantity::bigint AS quantity, unit_price::numeric(18, 4) AS unit_price,
           upper(currency) AS currency{extras}
    FROM valid
), fx AS (
    SELECT DISTINCT ON (upper(currency), day) upper(currency) AS currency, day, rate_to_aud
    FROM fx_rates ORDER BY upper(currency), day, updated_at DESC
), priced AS (
    SELECT t.*, t.sold_at::date AS sold_on, (t.quantity * t.unit_price)::numeric(28, 4) AS amount,
           CASE WHEN t.currency = 'AUD' THEN 1::numeric ELSE fx.rate_to_aud END AS rate_to_aud,
           c.segment AS customer_segment, p.category
    FROM typed t
    LEFT JOIN fx ON fx.currency = t.currency AND fx.day = t.sold_at::date
    LEFT JOIN customers c ON c.customer_id = t.customer_id
    LEFT JOIN products p ON p.sku = t.sku
)
SELECT region, txn_id, sold_at, store_id, customer_id, sku, quantity, unit_price, currency{extras},
       sold_on, amount, rate_to_aud,
       -- round half-even to cents (round() on numeric rounds half away from zero)
       (CASE WHEN abs(amount * rate_to_aud * 100 - trunc(amount * rate_to_aud * 100)) = 0.5
                  AND mod(trunc(amount * rate_to_aud * 100), 2) = 0
             THEN trunc(amount * rate_to_aud * 100) / 100
             ELSE round(amount * rate_to_aud, 2) END)::numeric(28, 2) AS amount_aud,
       customer_segment, category
FROM priced;
ALTER TABLE sales ADD PRIMARY KEY (region, txn_id);

CREATE TABLE daily_sales AS
SELECT sold_on, region, category, count(*) AS txns, sum(quantity) AS units,
       coalesce(sum(amount_aud), 0.00)::numeric(28, 2) AS revenue_aud
FROM sales GROUP BY sold_on, region, category;

CREATE TABLE customer_summary AS
SELECT s.customer_id, min(c.segment) AS segment, count(*) AS txns,
       coalesce(sum(s.amount_aud), 0.00)::numeric(28, 2) AS revenue_aud,
       min(s.sold_at) AS first_sold_at, max(s.sold_at) AS last_sold_at
FROM sales s LEFT JOIN customers c ON c.customer_id = s.customer_id
WHERE s.customer_id IS NOT NULL
GROUP BY s.customer_id;
ALTER TABLE customer_summary ADD PRIMARY KEY (customer_id);
"""


def pg_conninfo(url: str, schema: str) -> dict[str, Any]:
    parsed = sa.make_url(url)
    info: dict[str, Any] = {"host": parsed.host, "port": parsed.port, "user": parsed.username,
                            "password": parsed.password, "dbname": parsed.database}
    info = {k: v for k, v in info.items() if v is not None}
    info["options"] = f"-c search_path={schema} -c timezone=UTC"
    return info


def pg_rebuild_sql(extras: Sequence[str]) -> str:
    def quoted(name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    return PG_REBUILD.format(
        ts_pattern=TS_PATTERN,
        extras_stripped="".join(f", nullif(btrim({quoted(e)}), '') AS {quoted(e)}"
                                for e in extras),
        extras="".join(f", {quoted(e)}" for e in extras),
    )


def pg_load_sales(cur: psycopg.Cursor[Any], files: dict[str, Path],
                  headers: dict[str, list[str]]) -> tuple[int, float]:
    """COPY every region file into stg_sales; records dropped, seconds of the pre-filter."""
    dropped, prefilter = 0, 0.0
    for region, path in files.items():
        header = headers[region]
        cur.execute(sql.SQL("ALTER TABLE stg_sales ALTER COLUMN region SET DEFAULT {}")
                    .format(sql.Literal(region)))
        started = time.perf_counter()
        data, bad = keep_records(path.read_bytes(), len(header))
        prefilter += time.perf_counter() - started
        dropped += bad
        statement = sql.SQL("COPY stg_sales ({}) FROM STDIN (FORMAT csv, HEADER true)").format(
            sql.SQL(", ").join(sql.Identifier(name) for name in header))
        view = memoryview(data)
        with cur.copy(statement) as copy:
            for start in range(0, len(view), CHUNK):
                copy.write(view[start:start + CHUNK])
        del view, data
    return dropped, prefilter


def pg_copy_shop(cur: psycopg.Cursor[Any], shop: Path) -> None:
    source = sqlite3.connect(f"file:{shop}?mode=ro", uri=True)
    try:
        for table, columns in SHOP.items():
            cur.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(table)))
            statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
                sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns)))
            rows = source.execute(f"SELECT {', '.join(columns)} FROM {table}")
            with cur.copy(statement) as copy:
                for row in rows:
                    copy.write_row(row)
    finally:
        source.close()


def rebuild_postgresql(url: str, schema: str, data_dir: Path) -> dict[str, Any]:
    files = region_files(data_dir)
    headers = {region: read_header(path) for region, path in files.items()}
    extras = extras_of(headers)
    with psycopg.connect(**pg_conninfo(url, schema)) as conn:
        conn.execute(PG_SETUP)
        for name in extras:
            conn.execute(sql.SQL("ALTER TABLE stg_sales ADD COLUMN IF NOT EXISTS {} text")
                         .format(sql.Identifier(name)))
        conn.commit()
        steps: dict[str, float] = {}
        started = time.perf_counter()
        with conn.cursor() as cur:
            cur.execute("TRUNCATE stg_sales")
            dropped, steps["prefilter"] = pg_load_sales(cur, files, headers)
            cur.execute("ANALYZE stg_sales")
            steps["load"] = time.perf_counter() - started
            mark = time.perf_counter()
            pg_copy_shop(cur, data_dir / "shop.db")
            steps["shop"] = time.perf_counter() - mark
            mark = time.perf_counter()
            cur.execute(pg_rebuild_sql(extras))
            steps["rebuild"] = time.perf_counter() - mark
        mark = time.perf_counter()
        conn.commit()
        steps["commit"] = time.perf_counter() - mark
        seconds = time.perf_counter() - started
        counts = output_counts(conn, dropped)
    return {"seconds": seconds, "steps": steps, "counts": counts}


def output_counts(conn: Any, dropped: int) -> dict[str, Any]:
    """Row counts of the outputs, the rows dropped as bad, and the revenue sum as text."""
    def one(query: str) -> Any:
        return conn.execute(query).fetchone()[0]

    staged = one("SELECT count(*) FROM stg_sales")
    sales = one("SELECT count(*) FROM sales")
    return {
        "sales": sales,
        "daily_sales": one("SELECT count(*) FROM daily_sales"),
        "customer_summary": one("SELECT count(*) FROM customer_summary"),
        "dropped": dropped + staged - sales,
        "revenue_aud": str(one("SELECT sum(amount_aud) FROM sales")),
    }


# --------------------------------------------------------------------------- SQLite

SQLITE_SETUP = """
CREATE TABLE IF NOT EXISTS stg_sales (
    line_no INTEGER PRIMARY KEY, region TEXT,
    txn_id TEXT, sold_at TEXT, store_id TEXT, customer_id TEXT, sku TEXT,
    quantity TEXT, unit_price TEXT, currency TEXT);
CREATE TABLE IF NOT EXISTS customers (customer_id TEXT PRIMARY KEY, name TEXT, email TEXT,
                                      country TEXT, segment TEXT, updated_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS products (sku TEXT PRIMARY KEY, name TEXT, category TEXT,
                                     updated_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS fx_rates (currency TEXT, day DATE, rate_to_aud NUMERIC,
                                     updated_at TIMESTAMP, PRIMARY KEY (currency, day));
"""

SQLITE_SHOP = """
DELETE FROM customers;
INSERT INTO customers SELECT customer_id, name, email, country, segment, updated_at
    FROM shop.customers;
DELETE FROM products;
INSERT INTO products SELECT sku, name, category, updated_at FROM shop.products;
DELETE FROM fx_rates;
INSERT OR REPLACE INTO fx_rates SELECT upper(currency), day, rate_to_aud, updated_at
    FROM shop.fx_rates ORDER BY updated_at;
"""

SQLITE_REBUILD = """
DROP TABLE IF EXISTS sales;
DROP TABLE IF EXISTS daily_sales;
DROP TABLE IF EXISTS customer_summary;
CREATE TABLE sales (region TEXT NOT NULL, txn_id TEXT NOT NULL, sold_at TIMESTAMP,
    store_id TEXT, customer_id TEXT, sku TEXT, quantity INTEGER, unit_price NUMERIC,
    currency TEXT{extra_defs}, sold_on DATE, amount NUMERIC, rate_to_aud NUMERIC,
    amount_aud NUMERIC, customer_segment TEXT, category TEXT, PRIMARY KEY (region, txn_id));

INSERT INTO sales
WITH stripped AS (
    SELECT line_no, region, trim(txn_id) AS txn_id, trim(sold_at) AS sold_at,
           nullif(trim(store_id), '') AS store_id, nullif(trim(customer_id), '') AS customer_id,
           nullif(trim(sku), '') AS sku, trim(quantity) AS quantity,
           trim(unit_price) AS unit_price, trim(currency) AS currency{extras_stripped},
           datetime(trim(sold_at)) AS utc
    FROM stg_sales
), signed AS (
    SELECT *, ltrim(quantity, '+-') AS q, ltrim(unit_price, '+-') AS p FROM stripped
), valid AS (
    SELECT *, row_number() OVER (PARTITION BY region, txn_id ORDER BY line_no) AS nth
    FROM signed
    WHERE txn_id <> ''
      AND utc IS NOT NULL
      AND q <> '' AND length(quantity) - length(q) <= 1 AND q NOT GLOB '*[^0-9]*'
      AND length(q) <= 18
      AND p <> '' AND length(unit_price) - length(p) <= 1
      AND (CASE WHEN instr(p, '.') = 0 THEN p NOT GLOB '*[^0-9]*'
                ELSE instr(p, '.') > 1
                     AND substr(p, 1, instr(p, '.') - 1) NOT GLOB '*[^0-9]*'
                     AND length(p) - instr(p, '.') BETWEEN 1 AND 4
                     AND substr(p, instr(p, '.') + 1) NOT GLOB '*[^0-9]*' END)
      AND length(currency) = 3 AND currency NOT GLOB '*[^A-Za-z]*'
), typed AS (
    SELECT region, txn_id, utc AS sold_at, substr(utc, 1, 10) AS sold_on, store_id,
           customer_id, sku,
           CAST(quantity AS INTEGER) AS quantity, CAST(unit_price AS REAL) AS unit_price,
           upper(currency) AS currency{extras}
    FROM valid WHERE nth = 1
), priced AS (
    SELECT t.*, t.quantity * t.unit_price AS amount,
           CASE WHEN t.currency = 'AUD' THEN 1 ELSE fx.rate_to_aud END AS rate_to_aud,
           c.segment AS customer_segment, p.category
    FROM typed t
    LEFT JOIN fx_rates fx ON fx.currency = t.currency AND fx.day = t.sold_on
    LEFT JOIN customers c ON c.customer_id = t.customer_id
    LEFT JOIN products p ON p.sku = t.sku
)
SELECT region, txn_id, sold_at, store_id, customer_id, sku, quantity, unit_price, currency{extras},
       sold_on, round(amount, 4), rate_to_aud, round(amount * rate_to_aud, 2),
       customer_segment, category
FROM priced;

CREATE TABLE daily_sales AS
SELECT sold_on, region, category, count(*) AS txns, sum(quantity) AS units,
       round(coalesce(sum(amount_aud), 0.0), 2) AS revenue_aud
FROM sales GROUP BY sold_on, region, category;

CREATE TABLE customer_summary (customer_id TEXT PRIMARY KEY, segment TEXT, txns INTEGER,
    revenue_aud NUMERIC, first_sold_at TIMESTAMP, last_sold_at TIMESTAMP);
INSERT INTO customer_summary
SELECT s.customer_id, min(c.segment), count(*), round(coalesce(sum(s.amount_aud), 0.0), 2),
       min(s.sold_at), max(s.sold_at)
FROM sales s LEFT JOIN customers c ON c.customer_id = s.customer_id
WHERE s.customer_id IS NOT NULL
GROUP BY s.customer_id;
"""


def sqlite_rebuild_sql(extras: Sequence[str]) -> str:
    def quoted(name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    return SQLITE_REBUILD.format(
        extra_defs="".join(f", {quoted(e)} TEXT" for e in extras),
        extras_stripped="".join(f", nullif(trim({quoted(e)}), '') AS {quoted(e)}"
                                for e in extras),
        extras="".join(f", {quoted(e)}" for e in extras),
    )


def _rows(path: Path, fields: int, dropped: list[int]) -> Iterator[list[str]]:
    """The records of a region file after its header, without those of a wrong field count."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        next(reader, None)
        for row in reader:
            if len(row) == fields:
                yield row
            elif row:
                dropped[0] += 1


def rebuild_sqlite(path: Path, data_dir: Path) -> dict[str, Any]:
    files = region_files(data_dir)
    headers = {region: read_header(p) for region, p in files.items()}
    extras = extras_of(headers)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA temp_store=MEMORY")
        conn.execute("PRAGMA cache_size=-65536")
        conn.executescript(SQLITE_SETUP)
        known = {row[1] for row in conn.execute("PRAGMA table_info(stg_sales)")}
        for name in extras:
            if name not in known:
                conn.execute(f'ALTER TABLE stg_sales ADD COLUMN "{name}" TEXT')
        conn.execute(f"ATTACH DATABASE 'file:{data_dir / 'shop.db'}?mode=ro' AS shop")
        steps: dict[str, float] = {}
        started = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM stg_sales")
        dropped = [0]
        for region, file in files.items():
            header = headers[region]
            columns = ", ".join(f'"{name}"' for name in header)
            marks = ", ".join("?" for _ in header)
            conn.executemany(
                f"INSERT INTO stg_sales (region, {columns}) VALUES ('{region}', {marks})",
                _rows(file, len(header), dropped))
        steps["load"] = time.perf_counter() - started
        mark = time.perf_counter()
        for statement in _statements(SQLITE_SHOP):
            conn.execute(statement)
        steps["shop"] = time.perf_counter() - mark
        mark = time.perf_counter()
        for statement in _statements(sqlite_rebuild_sql(extras)):
            conn.execute(statement)
        steps["rebuild"] = time.perf_counter() - mark
        mark = time.perf_counter()
        conn.execute("COMMIT")
        steps["commit"] = time.perf_counter() - mark
        seconds = time.perf_counter() - started
        conn.execute("DETACH DATABASE shop")
        counts = output_counts(conn, dropped[0])
    finally:
        conn.close()
    return {"seconds": seconds, "steps": steps, "counts": counts}


def _statements(script: str) -> list[str]:
    """The statements of a script (``executescript`` would commit the open transaction)."""
    out, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            if current.strip():
                out.append(current.strip())
            current = ""
    if current.strip():
        out.append(current.strip())
    return out


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True,
                        help="postgresql://... (with --schema) or sqlite:///FILE")
    parser.add_argument("--schema", help="PostgreSQL schema to build in (must exist)")
    parser.add_argument("--data-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    backend = sa.make_url(args.url).get_backend_name()
    if backend == "postgresql":
        if not args.schema:
            parser.error("--schema is required for PostgreSQL")
        result = rebuild_postgresql(args.url, args.schema, args.data_dir)
    elif backend == "sqlite":
        database = sa.make_url(args.url).database
        if not database:
            parser.error("the SQLite URL needs a file")
        result = rebuild_sqlite(Path(database), args.data_dir)
    else:
        parser.error(f"unsupported database {backend}")
    result["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sys.stdout.write(json.dumps(result, default=str) + "\n")


if __name__ == "__main__":
    main()
