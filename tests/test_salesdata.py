"""Tests of the sales data directory generator and its change functions."""

from __future__ import annotations

import csv
import random
import re
import sqlite3
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loader import salesdata as sd
from loader.salesdata import HEADER, Scale

SMALL = Scale(sales=4_000, customers=200, products=60, days=40)
NOW = datetime(2026, 11, 5, 8, 30, 15, 250_000, tzinfo=UTC)
_PRICE = re.compile(r"\d+(\.\d{1,4})?")
_STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")

Rows = list[list[str]]


def _make(tmp_path: Path, scale: Scale = SMALL) -> Path:
    data_dir = tmp_path / "data"
    sd.generate(data_dir, scale)
    return data_dir


def _read(path: Path) -> tuple[list[str], Rows]:
    with path.open(newline="", encoding="utf-8") as f:
        header, *rows = csv.reader(f)
    return header, rows


def _all(data_dir: Path) -> dict[str, tuple[list[str], Rows]]:
    return {region: _read(path) for region, path in sd.sales_files(data_dir).items()}


def _utc(sold_at: str) -> datetime:
    moment = datetime.fromisoformat(sold_at)
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _legal(header: list[str], row: list[str]) -> bool:
    """The contract's rules for one row, written independently of the generator."""
    if len(row) != len(header):
        return False
    value = dict(zip(header, row, strict=True))
    try:
        _utc(value["sold_at"])
        int(value["quantity"])
    except ValueError:
        return False
    return (
        value["txn_id"] != ""
        and _PRICE.fullmatch(value["unit_price"]) is not None
        and value["currency"].upper() in sd.CURRENCIES
    )


def _table(data_dir: Path, sql: str) -> list[tuple[object, ...]]:
    con = sqlite3.connect(data_dir / sd.SHOP_DB)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _share(flags: list[bool]) -> float:
    return sum(flags) / len(flags)


def _keyed(rows: list[tuple[object, ...]]) -> dict[object, tuple[object, ...]]:
    return {row[0]: row for row in rows}


# ------------------------------------------------------------------ generate


def test_region_files_parse_with_the_header_and_hold_all_rows(tmp_path: Path) -> None:
    """Each region gets a csv file that parses, starts with the header, and the
    files together hold exactly `sales` rows."""
    files = _all(_make(tmp_path))
    assert list(files) == sorted(SMALL.regions)
    for region, (header, _) in files.items():
        extra = ["channel"] if region == SMALL.regions[0] else []
        assert header == [*HEADER, *extra]
    assert sum(len(rows) for _, rows in files.values()) == SMALL.sales


def test_txn_ids_unique_apart_from_the_deliberate_duplicate(tmp_path: Path) -> None:
    """With bad rows each file repeats exactly one txn_id once; without, ids are unique."""
    for region, (_, rows) in _all(_make(tmp_path / "bad")).items():
        counts = Counter(row[0] for row in rows if row[0])
        assert [n for n in counts.values() if n > 1] == [2], region
    clean = _make(tmp_path / "clean", Scale(sales=2_000, bad_rows=False))
    for header, rows in _all(clean).values():
        assert len({row[0] for row in rows}) == len(rows)
        assert all(_legal(header, row) for row in rows)


def test_bad_rows_hold_one_reject_of_each_kind_per_file(tmp_path: Path) -> None:
    """Every file has one short row, an empty txn_id and one each of the bad values."""
    for header, rows in _all(_make(tmp_path)).values():
        assert sum(len(row) != len(header) for row in rows) == 1
        full = [dict(zip(header, row, strict=True)) for row in rows if len(row) == len(header)]
        for column, bad in [
            ("txn_id", ""),
            ("sold_at", "2026-13-45"),
            ("quantity", "1.5"),
            ("unit_price", "1.23456"),
            ("currency", "US"),
        ]:
            assert sum(value[column] == bad for value in full) == 1, column
        assert sum(not _legal(header, row) for row in rows) == 6


def test_good_rows_follow_the_contract_and_its_mix(tmp_path: Path) -> None:
    """Good rows lie in the day range, use all four timestamp forms, all ten
    currencies (some in lower case) and about the stated shares of oddities."""
    rows = [
        dict(zip(h, row, strict=True))
        for h, rs in _all(_make(tmp_path)).values()
        for row in rs
        if _legal(h, row)
    ]
    start = datetime.combine(SMALL.first_day, datetime.min.time())
    stop = datetime.combine(SMALL.end + timedelta(days=1), datetime.min.time())
    assert all(start <= _utc(r["sold_at"]) < stop for r in rows)
    forms = Counter(
        "date" if len(s) == 10 else "Z" if s.endswith("Z") else " " if " " in s else "offset"
        for s in (r["sold_at"] for r in rows)
    )
    assert set(forms) == {"date", "Z", " ", "offset"} and forms["offset"] > len(rows) / 2
    currencies = Counter(r["currency"] for r in rows)
    assert {c.upper() for c in currencies} == set(sd.CURRENCIES)
    assert currencies.most_common(1)[0][0] == "AUD" and any(c.islower() for c in currencies)
    assert 0.01 < _share([r["customer_id"] == "" for r in rows]) < 0.05
    assert 0.005 < _share([r["customer_id"] >= "C900000" for r in rows]) < 0.04
    assert 0.003 < _share([r["sku"] == "" for r in rows]) < 0.02
    assert 0.01 < _share([int(r["quantity"]) < 0 for r in rows]) < 0.04
    assert all(1 <= int(r["quantity"]) <= 10 for r in rows if not r["quantity"].startswith("-"))
    assert {len(r["unit_price"].partition(".")[2]) for r in rows} == {0, 1, 2, 3, 4}


def test_quirks_quote_commas_and_quotes_and_use_crlf_in_one_file(tmp_path: Path) -> None:
    """The first region's channel column holds quoted commas and quotes that the csv
    module reads back; the last region file alone ends its lines with CRLF."""
    data_dir = _make(tmp_path)
    header, rows = _read(data_dir / f"sales_{SMALL.regions[0]}.csv")
    channels = {row[header.index("channel")] for row in rows if len(row) == len(header)}
    assert any("," in c and '"' in c for c in channels)
    for region in SMALL.regions:
        raw = (data_dir / f"sales_{region}.csv").read_bytes()
        lines = raw.count(b"\n")
        assert raw.count(b"\r\n") == (lines if region == SMALL.regions[-1] else 0)


def test_shop_tables_have_exactly_the_contract_columns(tmp_path: Path) -> None:
    """shop.db holds customers, products and fx_rates with the contract's columns,
    declared types and primary keys."""
    data_dir = _make(tmp_path)
    tables = {
        name: [(c[1], c[2], c[5]) for c in _table(data_dir, f"PRAGMA table_info({name})")]
        for (name,) in _table(data_dir, "SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    assert tables == {
        "customers": [
            ("customer_id", "TEXT", 1),
            ("name", "TEXT", 0),
            ("email", "TEXT", 0),
            ("country", "TEXT", 0),
            ("segment", "TEXT", 0),
            ("updated_at", "TIMESTAMP", 0),
        ],
        "products": [
            ("sku", "TEXT", 1),
            ("name", "TEXT", 0),
            ("category", "TEXT", 0),
            ("updated_at", "TIMESTAMP", 0),
        ],
        "fx_rates": [
            ("currency", "TEXT", 1),
            ("day", "DATE", 2),
            ("rate_to_aud", "NUMERIC", 0),
            ("updated_at", "TIMESTAMP", 0),
        ],
    }


def test_shop_rows_follow_the_contract(tmp_path: Path) -> None:
    """Customers and products have the scale's counts, segments and 20-50 categories
    with a few NULLs; fx rates cover the nine other currencies with few gaps."""
    data_dir = _make(tmp_path, Scale(sales=100, customers=2_000, products=1_000, days=200))
    customers = _table(data_dir, "SELECT segment, updated_at FROM customers")
    assert len(customers) == 2_000
    assert {seg for seg, _ in customers} == {*sd.SEGMENTS, None}
    products = _table(data_dir, "SELECT category, updated_at FROM products")
    assert None in {cat for cat, _ in products}
    assert 20 <= len({cat for cat, _ in products} - {None}) <= 50
    fx = _table(data_dir, "SELECT currency, day, rate_to_aud, updated_at FROM fx_rates")
    assert {str(code).upper() for code, *_ in fx} == set(sd.CURRENCIES) - {"AUD"}
    assert any(str(code).islower() for code, *_ in fx)
    assert 0.97 * 9 * 200 < len(fx) < 9 * 200
    days = {date.fromisoformat(str(day)) for _, day, *_ in fx}
    assert min(days) == date(2026, 11, 1) - timedelta(days=199) and max(days) == date(2026, 11, 1)
    assert all(isinstance(rate, float) and round(rate, 6) == rate for _, _, rate, _ in fx)
    stamps = [str(u) for *_, u in fx] + [str(u) for _, u in customers + products]
    assert all(_STAMP.fullmatch(u) for u in stamps)


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    """Two directories generated from one seed are byte for byte the same; another
    seed gives other sales."""
    one, two = _make(tmp_path / "one"), _make(tmp_path / "two")
    names = sorted(p.name for p in one.iterdir())
    assert names == sorted(p.name for p in two.iterdir())
    assert all((one / n).read_bytes() == (two / n).read_bytes() for n in names)
    other = _make(tmp_path / "other", Scale(sales=4_000, customers=200, products=60, seed=8))
    assert (other / "sales_north.csv").read_bytes() != (one / "sales_north.csv").read_bytes()


def test_generate_replaces_an_existing_directory(tmp_path: Path) -> None:
    """Generating again removes region files that the new scale does not have."""
    data_dir = _make(tmp_path)
    sd.generate(data_dir, Scale(sales=50, regions=("north",), bad_rows=False, quirks=False))
    assert list(sd.sales_files(data_dir)) == ["north"]
    assert len(_read(data_dir / "sales_north.csv")[1]) == 50


def test_scale_presets_and_validation() -> None:
    """The presets have the documented sizes; a bad region name is refused."""
    assert Scale.quick().sales == 2_000
    bench = Scale.bench()
    assert (bench.sales, bench.customers, bench.products, bench.days) == (
        1_000_000,
        100_000,
        10_000,
        3 * 365,
    )
    with pytest.raises(ValueError):
        Scale(regions=("north-east",))


@given(st.datetimes(datetime(1900, 1, 1), datetime(2200, 1, 1), timezones=st.just(UTC)))
def test_stamp_is_never_before_now(now: datetime) -> None:
    """updated_at text is UTC, whole seconds, and never earlier than `now`."""
    text = sd.stamp(now)
    stamped = datetime.strptime(text, sd.STAMP_FORMAT).replace(tzinfo=UTC)
    assert now <= stamped < now + timedelta(seconds=1)


# ------------------------------------------------------------- sales changes


def test_edit_sales_changes_about_the_fraction_and_keeps_ids(tmp_path: Path) -> None:
    """edit_sales(0.1) changes about 10% of rows, exactly those it reports, keeps
    txn_ids and order, leaves the rejects alone and keeps the edited rows legal."""
    data_dir = _make(tmp_path)
    before = _all(data_dir)
    result = sd.edit_sales(data_dir, 0.1, random.Random(3))
    after = _all(data_dir)
    changed = 0
    for region, (header, rows) in before.items():
        new_header, new_rows = after[region]
        assert new_header == header
        assert [r[0] for r in new_rows] == [r[0] for r in rows]
        diff = [(old, new) for old, new in zip(rows, new_rows, strict=True) if old != new]
        assert [new[0] for _, new in diff] == result["ids"][region]
        assert all(_legal(header, old) and _legal(header, new) for old, new in diff)
        changed += len(diff)
    assert changed == result["edited"] and 0.08 < changed / SMALL.sales < 0.12
    assert sum(result["fields"].values()) >= changed


def test_edit_sales_with_a_seed_is_reproducible(tmp_path: Path) -> None:
    """Two equal directories edited with the same int seed end up identical."""
    one, two = _make(tmp_path / "one"), _make(tmp_path / "two")
    assert sd.edit_sales(one, 0.2, 11) == sd.edit_sales(two, 0.2, 11)
    for name in ("sales_east.csv", "sales_west.csv"):
        assert (one / name).read_bytes() == (two / name).read_bytes()


def test_delete_sales_removes_exactly_count_good_rows(tmp_path: Path) -> None:
    """delete_sales(5) removes exactly the 5 reported rows, all good ones, and keeps
    the rejects and the line ends of every file."""
    data_dir = _make(tmp_path)
    before = _all(data_dir)
    result = sd.delete_sales(data_dir, 5, random.Random(2))
    after = _all(data_dir)
    gone = {(r, row[0]) for r, (_, rows) in before.items() for row in rows} - {
        (r, row[0]) for r, (_, rows) in after.items() for row in rows
    }
    assert result["deleted"] == 5 and len(gone) == 5
    assert gone == {(r, tid) for r, ids in result["ids"].items() for tid in ids}
    for region, (_, rows) in before.items():
        kept = [row for row in rows if (region, row[0]) not in gone]
        assert after[region][1] == kept
    crlf = (data_dir / f"sales_{SMALL.regions[-1]}.csv").read_bytes()
    assert crlf.count(b"\r\n") == crlf.count(b"\n")


def test_insert_sales_appends_count_new_legal_rows(tmp_path: Path) -> None:
    """insert_sales(25) appends 25 legal rows with new, unique txn_ids."""
    data_dir = _make(tmp_path)
    before = _all(data_dir)
    result = sd.insert_sales(data_dir, 25, random.Random(4))
    after = _all(data_dir)
    added = 0
    for region, (header, rows) in after.items():
        old = before[region][1]
        assert rows[: len(old)] == old
        new = rows[len(old) :]
        assert [row[0] for row in new] == result["ids"][region]
        assert all(_legal(header, row) for row in new)
        assert not {row[0] for row in new} & {row[0] for row in old}
        assert len({row[0] for row in new}) == len(new)
        added += len(new)
    assert added == result["inserted"] == 25


def test_add_region_writes_a_new_legal_file(tmp_path: Path) -> None:
    """add_region writes sales_<region>.csv with the header and `rows` legal rows."""
    data_dir = _make(tmp_path)
    assert sd.add_region(data_dir, "central", 120, 5)["rows"] == 120
    header, rows = _read(data_dir / "sales_central.csv")
    assert header == list(HEADER) and len(rows) == 120
    assert all(_legal(header, row) for row in rows) and len({r[0] for r in rows}) == 120
    with pytest.raises(FileExistsError):
        sd.add_region(data_dir, "central", 1, 5)


def test_add_column_adds_a_text_column_to_one_file(tmp_path: Path) -> None:
    """add_column appends the named column to one file's header and every row,
    leaving the other columns and the other files alone."""
    data_dir = _make(tmp_path)
    before = _all(data_dir)
    result = sd.add_column(data_dir, "south", "note", random.Random(6))
    after = _all(data_dir)
    header, rows = after["south"]
    assert header == [*before["south"][0], "note"] and result["rows"] == len(rows)
    assert [row[:-1] for row in rows] == before["south"][1]
    assert {region: after[region] for region in after if region != "south"} == {
        region: before[region] for region in before if region != "south"
    }
    with pytest.raises(ValueError):
        sd.add_column(data_dir, "south", "note", random.Random(6))


def test_move_sale_moves_one_row_to_another_day_and_product(tmp_path: Path) -> None:
    """move_sale changes one row only: its UTC day and its sku (to a known one)."""
    data_dir = _make(tmp_path)
    before = _all(data_dir)
    result = sd.move_sale(data_dir, random.Random(7))
    after = _all(data_dir)
    diff = [
        (old, new)
        for region in before
        for old, new in zip(before[region][1], after[region][1], strict=True)
        if old != new
    ]
    assert len(diff) == 1
    (old, new) = diff[0]
    assert new[0] == old[0] == result["txn_id"]
    assert _utc(new[1]).date() != _utc(old[1]).date()
    assert new[4] != old[4] and (new[4],) in _table(data_dir, "SELECT sku FROM products")
    assert old[2:4] + old[5:] == new[2:4] + new[5:]


# -------------------------------------------------------------- shop changes


def test_correct_fx_changes_exactly_count_rates_stamped_now(tmp_path: Path) -> None:
    """correct_fx(7) changes the rate of exactly 7 fx rows, each stamped >= now."""
    data_dir = _make(tmp_path)
    query = "SELECT currency || day, rate_to_aud, updated_at FROM fx_rates"
    before = _keyed(_table(data_dir, query))
    result = sd.correct_fx(data_dir, 7, random.Random(8), NOW)
    after = _keyed(_table(data_dir, query))
    changed = {key for key in after if after[key] != before[key]}
    assert after.keys() == before.keys() and len(changed) == 7
    assert changed == {code + day for code, day in result["keys"]}
    for key in changed:
        assert after[key][1] != before[key][1]
        assert str(after[key][2]) >= NOW.strftime(sd.STAMP_FORMAT)


def test_fill_fx_gaps_inserts_missing_days_only(tmp_path: Path) -> None:
    """fill_fx_gaps(4) adds 4 rates on days that had none for their currency."""
    data_dir = _make(tmp_path, Scale(sales=10, days=400))
    query = "SELECT UPPER(currency) || day, rate_to_aud, updated_at FROM fx_rates"
    before = _keyed(_table(data_dir, query))
    result = sd.fill_fx_gaps(data_dir, 4, random.Random(9), NOW)
    after = _keyed(_table(data_dir, query))
    new = after.keys() - before.keys()
    assert result["inserted"] == 4 and new == {c + d for c, d in result["keys"]}
    assert {k: after[k] for k in before} == before
    assert all(after[k][2] == sd.stamp(NOW) and float(str(after[k][1])) > 0 for k in new)


def test_change_segments_changes_exactly_count_customers(tmp_path: Path) -> None:
    """change_segments(10) gives 10 customers another segment, stamped now."""
    data_dir = _make(tmp_path)
    query = "SELECT customer_id, segment, updated_at, name FROM customers"
    before = _keyed(_table(data_dir, query))
    result = sd.change_segments(data_dir, 10, random.Random(10), NOW)
    after = _keyed(_table(data_dir, query))
    changed = {k for k in after if after[k] != before[k]}
    assert changed == set(result["ids"]) and len(changed) == 10
    for k in changed:
        assert after[k][1] in sd.SEGMENTS and after[k][1] != before[k][1]
        assert after[k][2] == sd.stamp(NOW) and after[k][3] == before[k][3]


def test_recategorise_products_changes_exactly_count_products(tmp_path: Path) -> None:
    """recategorise_products(10) moves 10 products to another existing category."""
    data_dir = _make(tmp_path)
    query = "SELECT sku, category, updated_at FROM products"
    before = _keyed(_table(data_dir, query))
    categories = {row[1] for row in before.values()} - {None}
    result = sd.recategorise_products(data_dir, 10, random.Random(11), NOW)
    after = _keyed(_table(data_dir, query))
    changed = {k for k in after if after[k] != before[k]}
    assert changed == set(result["skus"]) and len(changed) == 10
    assert all(after[k][1] in categories and after[k][1] != before[k][1] for k in changed)
    assert all(after[k][2] == sd.stamp(NOW) for k in changed)


def test_delete_customers_deletes_exactly_count(tmp_path: Path) -> None:
    """delete_customers(3) deletes the 3 reported customers and nothing else."""
    data_dir = _make(tmp_path)
    query = "SELECT * FROM customers"
    before = _keyed(_table(data_dir, query))
    result = sd.delete_customers(data_dir, 3, random.Random(12))
    after = _keyed(_table(data_dir, query))
    assert before.keys() - after.keys() == set(result["ids"]) and len(result["ids"]) == 3
    assert {k: before[k] for k in after} == after
    with pytest.raises(ValueError):
        sd.delete_customers(data_dir, len(after) + 1, random.Random(12))
