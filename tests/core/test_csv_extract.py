"""CSV snapshot extract: rejects, unchanged files, schema evolution and bad files.

Each ``orders_<shop>.csv`` is a full snapshot of one shop's orders. Bad records
go to ``rejects`` (source = file name, line = physical line where the record
starts, raw text); a file that cannot be loaded fails the run and nothing of
it changes, while the good files of the same directory still load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from loader import CsvSnapshot, Field, Warehouse, run_sequence
from loader.execute import RunOutcome
from loader.sources.csvfile import parse_int

from .shop import Shop, dump, orders_extract, rows, sample_shop, view

EAST, WEST = "orders_east.csv", "orders_west.csv"


def load(wh: Warehouse, shop: Shop | Path, mode: str = "refresh",
         extract: CsvSnapshot | None = None) -> RunOutcome:
    data_dir = shop.data_dir if isinstance(shop, Shop) else shop
    return run_sequence(wh, [extract or orders_extract()], mode=mode,  # type: ignore[arg-type]
                        params={"data_dir": str(data_dir)})


def rejects(wh: Warehouse, source: str | None = None) -> list[tuple[Any, ...]]:
    with wh.begin() as conn:
        found = rows(conn, "SELECT source, line, reason, raw FROM rejects")
    return sorted((r for r in found if source is None or r[0] == source),
                  key=lambda r: (r[0], r[1]))


def partition(wh: Warehouse, shop: str) -> dict[str, list[dict[str, Any]]]:
    """Everything the warehouse holds about one shop's file: rows with stamps, the
    loaded-source record and the rejects."""
    everything = dump(wh, meta=True)
    name = f"orders_{shop}.csv"
    return {
        "orders_tracked": [r for r in everything["orders_tracked"] if r["shop"] == shop],
        "loader_sources": [r for r in everything["loader_sources"] if r["source"] == name],
        "rejects": [r for r in everything.get("rejects", []) if r["source"] == name],
    }


BAD_FILE = (
    "id,qty,price,cust\n"          # 1
    "1,2,3.50,c1\n"                # 2 kept
    "2,2,3.50\n"                   # 3 field_count
    ",1,1.00,c1\n"                 # 4 empty_key
    "3,x,1.00,c1\n"                # 5 bad_qty
    "4,1,1.234,c1\n"               # 6 bad_price
    "5,,1.00,c1\n"                 # 7 bad_qty: qty may not be empty
    "\n"                           # 8 blank, skipped
    "1,9,9.99,c2\n"                # 9 duplicate_key of line 2
    '6,1,"1.00",c3\n'              # 10 kept
    '7,1,2.00,"two\n'              # 11 kept: a quoted value over two lines
    'lines"\n'                     # 12
    "8,1,1.00,c1,surplus\n"        # 13 field_count
    "9,z,1.00,c1\n"                # 14 bad_qty
)


def test_bad_records_are_rejected_with_file_line_reason_and_text(
        warehouse: Warehouse, tmp_path: Path) -> None:
    """Each bad record is a reject with its reason (field_count, empty_key, bad_<col>,
    duplicate_key keeping the first occurrence), the bare file name, the 1-based
    physical line where the record starts and its raw text; good records load."""
    shop = sample_shop(tmp_path / "data")
    shop.csv_path("east").write_text(BAD_FILE, encoding="utf-8")
    outcome = load(warehouse, shop, "full")
    assert outcome.status == "succeeded", outcome.error
    assert outcome.results["orders_csv"].rejected == 8
    assert rejects(warehouse) == [
        (EAST, 3, "field_count", "2,2,3.50"),
        (EAST, 4, "empty_key", ",1,1.00,c1"),
        (EAST, 5, "bad_qty", "3,x,1.00,c1"),
        (EAST, 6, "bad_price", "4,1,1.234,c1"),
        (EAST, 7, "bad_qty", "5,,1.00,c1"),
        (EAST, 9, "duplicate_key", "1,9,9.99,c2"),
        (EAST, 13, "field_count", "8,1,1.00,c1,surplus"),
        (EAST, 14, "bad_qty", "9,z,1.00,c1"),
    ]
    east = {r["id"]: r for r in view(warehouse, "orders") if r["shop"] == "east"}
    assert east == {
        "1": {"shop": "east", "id": "1", "qty": 2, "price": pytest.approx(3.5), "cust": "c1"},
        "6": {"shop": "east", "id": "6", "qty": 1, "price": 1, "cust": "c3"},
        "7": {"shop": "east", "id": "7", "qty": 1, "price": 2, "cust": "two\nlines"},
    }


def test_reloading_a_file_replaces_its_rejects_only(warehouse: Warehouse,
                                                   tmp_path: Path) -> None:
    """When a file is loaded again its rejects are replaced by the new ones; the
    rejects of the other files stay."""
    shop = sample_shop(tmp_path / "data")
    shop.csv_path("east").write_text(BAD_FILE, encoding="utf-8")
    shop.csv_path("west").write_text("id,qty,price,cust\n1,one,1.00,c1\n", encoding="utf-8")
    assert load(warehouse, shop, "full").status == "succeeded"
    assert len(rejects(warehouse, EAST)) == 8
    west_rejects = rejects(warehouse, WEST)
    assert west_rejects == [(WEST, 2, "bad_qty", "1,one,1.00,c1")]

    shop.csv_path("east").write_text(
        "id,qty,price,cust\n1,2,3.50,c1\n2,2,-\n3,4,5.00,c1\n", encoding="utf-8")
    outcome = load(warehouse, shop)
    assert outcome.status == "succeeded", outcome.error
    assert outcome.results["orders_csv"].details["unchanged"] == [WEST]
    assert rejects(warehouse, EAST) == [(EAST, 3, "field_count", "2,2,-")]
    assert rejects(warehouse, WEST) == west_rejects

    shop.csv_path("east").write_text("id,qty,price,cust\n1,2,3.50,c1\n", encoding="utf-8")
    assert load(warehouse, shop).status == "succeeded"
    assert rejects(warehouse, EAST) == []
    assert rejects(warehouse, WEST) == west_rejects


def test_an_unchanged_file_is_skipped_by_a_refresh_and_reread_by_a_full_run(
        warehouse: Warehouse, tmp_path: Path) -> None:
    """A refresh skips a file whose content did not change (listed as unchanged, no row
    read); a full run reads it again, and finds nothing to write."""
    shop = sample_shop(tmp_path / "data")
    assert load(warehouse, shop, "full").status == "succeeded"
    shop.put_order("west", "3", 1, "1.00", "c1")
    shop.write_orders("west")
    shop.write_orders("east")  # rewritten with the same content
    before = dump(warehouse, meta=True)["orders_tracked"]

    refresh = load(warehouse, shop).results["orders_csv"]
    assert refresh.details["unchanged"] == [EAST]
    assert (refresh.rows_read, refresh.inserted) == (3, 1)
    east_rows = [r for r in dump(warehouse)["orders_tracked"] if r["shop"] == "east"]
    assert east_rows == [r for r in before if r["shop"] == "east"]

    full = load(warehouse, shop, "full").results["orders_csv"]
    assert "unchanged" not in full.details
    assert full.rows_read == 6
    assert (full.inserted, full.updated, full.deleted) == (0, 0, 0)


def test_a_new_column_in_a_file_is_added_to_the_table_view_and_schema_history(
        warehouse: Warehouse, tmp_path: Path) -> None:
    """A column the file has beyond the declared fields becomes a text column of the
    table and the view, holding the file's values (NULL when empty) and NULL for the
    rows of the other files, and is recorded in ``loader_schema_history``."""
    shop = sample_shop(tmp_path / "data")
    first = load(warehouse, shop, "full")
    assert first.status == "succeeded"
    shop.extras["west"] = ["note"]
    shop.orders["west"]["1"]["note"] = "fragile"
    shop.write_orders("west")
    outcome = load(warehouse, shop)
    assert outcome.status == "succeeded", outcome.error
    assert outcome.results["orders_csv"].details["unchanged"] == [EAST]

    notes = {(r["shop"], r["id"]): r["note"] for r in view(warehouse, "orders")}
    assert notes == {("east", "1"): None, ("east", "2"): None, ("east", "3"): None,
                     ("west", "1"): "fragile", ("west", "2"): None}
    with warehouse.begin() as conn:
        history = rows(conn, "SELECT table_name, change, column_name, column_type, reason, "
                             "run_id FROM loader_schema_history WHERE change = 'add_column'")
        tracked = {c["name"] for c in sa.inspect(conn).get_columns("orders_tracked")}
    assert history == [("orders", "add_column", "note", "text", f"new column in {WEST}",
                        outcome.run_id)]
    assert {"note", "_changed_at_note"} <= tracked

    shop.put_order("east", "4", 1, "1.00", "c1")
    shop.write_orders("east")
    assert load(warehouse, shop).status == "succeeded"
    assert {(r["shop"], r["id"]): r["note"] for r in view(warehouse, "orders")} == {
        **notes, ("east", "4"): None}


def test_an_extra_column_in_the_file_that_creates_the_table_is_loaded(
        warehouse: Warehouse, tmp_path: Path) -> None:
    """An extra column present in the first file ever loaded (the one that creates the
    table) holds that file's values, is recorded in the schema history, and the file
    loads again after it changes."""
    shop = sample_shop(tmp_path / "data")
    shop.extras["east"] = ["note"]
    shop.orders["east"]["1"]["note"] = "fragile"
    shop.write_orders("east")
    first = load(warehouse, shop, "full")
    assert first.status == "succeeded", first.error
    notes = {(r["shop"], r["id"]): r["note"] for r in view(warehouse, "orders")}
    assert notes[("east", "1")] == "fragile"
    with warehouse.begin() as conn:
        assert rows(conn, "SELECT column_name FROM loader_schema_history "
                          "WHERE column_name IS NOT NULL") == [("note",)]
    shop.orders["east"]["2"]["note"] = "heavy"
    shop.write_orders("east")
    again = load(warehouse, shop)
    assert again.status == "succeeded", again.error
    assert {(r["shop"], r["id"]): r["note"] for r in view(warehouse, "orders")}[
        ("east", "2")] == "heavy"


BROKEN = {
    "header_missing": ("1,2,3.50,c1\n2,1,10.00,c2\n", "'id'"),
    "column_missing": ("id,qty,cust\n1,2,c1\n", "'price'"),
    "empty_file": ("", "no header row"),
}


@pytest.mark.parametrize("broken", list(BROKEN))
def test_a_file_with_a_bad_header_fails_and_changes_nothing_of_it(
        warehouse: Warehouse, tmp_path: Path, broken: str) -> None:
    """A file without its header row, or missing a declared column, fails the run with
    an error naming the file and the column; nothing of that file changes (rows,
    stamps, loaded-source record, rejects), while a good file in the same directory
    still loads."""
    text, named = BROKEN[broken]
    shop = sample_shop(tmp_path / "data")
    shop.put_order("east", "4", 1, "x", "c1")
    shop.write_orders("east")
    assert load(warehouse, shop, "full").status == "succeeded"
    east_before = partition(warehouse, "east")
    assert east_before["rejects"]

    shop.csv_path("east").write_text(text, encoding="utf-8")
    shop.put_order("west", "3", 7, "7.00", "c2")
    shop.write_orders("west")
    outcome = load(warehouse, shop)

    assert outcome.status == "failed"
    assert outcome.error is not None
    assert EAST in outcome.error and named in outcome.error
    assert partition(warehouse, "east") == east_before
    west = {r["id"]: r["qty"] for r in view(warehouse, "orders") if r["shop"] == "west"}
    assert west == {"1": 5, "2": 3, "3": 7}


def test_a_partition_file_loaded_before_and_now_missing_fails_and_changes_nothing(
        warehouse: Warehouse, tmp_path: Path) -> None:
    """When a file loaded before is gone, the run fails naming it and nothing changes,
    not even the files that are still there."""
    shop = sample_shop(tmp_path / "data")
    assert load(warehouse, shop, "full").status == "succeeded"
    before = dump(warehouse, meta=True)
    shop.csv_path("east").unlink()
    shop.put_order("west", "3", 7, "7.00", "c2")
    shop.write_orders("west")
    for mode in ("refresh", "full"):
        outcome = load(warehouse, shop, mode)
        assert outcome.status == "failed"
        assert EAST in (outcome.error or "") and "missing" in (outcome.error or "")
        assert dump(warehouse, meta=True) == before


def test_two_files_whose_partitions_differ_only_in_case_fail(warehouse: Warehouse,
                                                            tmp_path: Path) -> None:
    """``orders_east.csv`` and ``orders_EAST.csv`` name the same partition: the run fails
    naming both, and nothing changes."""
    shop = sample_shop(tmp_path / "data")
    assert load(warehouse, shop, "full").status == "succeeded"
    before = dump(warehouse, meta=True)
    (shop.data_dir / "orders_EAST.csv").write_text("id,qty,price,cust\n9,1,1.00,c1\n")
    shop.put_order("west", "3", 7, "7.00", "c2")
    shop.write_orders("west")
    outcome = load(warehouse, shop)
    assert outcome.status == "failed"
    assert "orders_EAST.csv" in (outcome.error or "") and EAST in (outcome.error or "")
    assert dump(warehouse, meta=True) == before


@pytest.mark.parametrize("extra", ["Price", "PRICE", "shop", "total", "seg"])
def test_an_extra_column_named_like_an_existing_column_fails_that_file(
        warehouse: Warehouse, tmp_path: Path, extra: str) -> None:
    """An extra column whose name is, ignoring case, that of a declared field, the
    partition column or a column another processor added (``total``, ``seg``) fails
    that file, naming it and the column; nothing of it changes; the other file loads."""
    shop = sample_shop(tmp_path / "data")
    assert shop.run(warehouse, "full").status == "succeeded"
    east_before = partition(warehouse, "east")
    shop.extras["east"] = [extra]
    shop.orders["east"]["1"]["qty"] = "8"
    shop.write_orders("east")
    shop.put_order("west", "3", 7, "7.00", "c2")
    shop.write_orders("west")
    outcome = load(warehouse, shop)
    assert outcome.status == "failed"
    assert EAST in (outcome.error or "") and repr(extra) in (outcome.error or "")
    assert partition(warehouse, "east") == east_before
    assert {r["id"] for r in view(warehouse, "orders") if r["shop"] == "west"} == {
        "1", "2", "3"}


def _typed_key_extract() -> CsvSnapshot:
    return CsvSnapshot("items_csv", "items", "items_{shop}.csv", ("shop", "id"),
                       (Field("id", "integer", parse_int), Field("name")))


def test_a_file_with_an_integer_key_can_be_loaded_again(warehouse: Warehouse,
                                                         tmp_path: Path) -> None:
    """Reloading a file whose key field is typed (integer) keeps its rows: a full run
    over an unchanged file deletes nothing, and a changed row is updated in place."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    path = data_dir / "items_a.csv"
    path.write_text("id,name\n1,one\n2,two\n", encoding="utf-8")
    extract = _typed_key_extract()
    assert load(warehouse, data_dir, "full", extract).status == "succeeded"
    again = load(warehouse, data_dir, "full", extract)
    assert again.status == "succeeded", again.error
    assert view(warehouse, "items") == [{"shop": "a", "id": 1, "name": "one"},
                                        {"shop": "a", "id": 2, "name": "two"}]
    assert again.results["items_csv"].deleted == 0
    path.write_text("id,name\n1,uno\n2,two\n", encoding="utf-8")
    changed = load(warehouse, data_dir, "refresh", extract)
    assert changed.status == "succeeded", changed.error
    assert view(warehouse, "items") == [{"shop": "a", "id": 1, "name": "uno"},
                                        {"shop": "a", "id": 2, "name": "two"}]


def test_integer_keys_that_differ_only_in_spelling_are_duplicates(warehouse: Warehouse,
                                                                 tmp_path: Path) -> None:
    """``1`` and ``01`` are the same integer key: the second record is a duplicate_key
    reject and the first is kept."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "items_a.csv").write_text("id,name\n1,one\n01,again\n", encoding="utf-8")
    outcome = load(warehouse, data_dir, "full", _typed_key_extract())
    assert outcome.status == "succeeded", outcome.error
    assert view(warehouse, "items") == [{"shop": "a", "id": 1, "name": "one"}]
    assert rejects(warehouse) == [("items_a.csv", 3, "duplicate_key", "01,again")]


def test_a_file_that_is_not_utf8_half_way_fails_naming_its_line_and_the_other_file_loads(
        warehouse: Warehouse, tmp_path: Path) -> None:
    """A file with a byte sequence that is not UTF-8 on its third line fails the run with
    an error naming the file and the line; nothing of it changes; the other file of the
    directory still loads."""
    shop = sample_shop(tmp_path / "data")
    assert load(warehouse, shop, "full").status == "succeeded"
    east_before = partition(warehouse, "east")
    shop.csv_path("east").write_bytes(b"id,qty,price,cust\n1,2,3.50,c1\n2,1,\xff,c2\n")
    shop.put_order("west", "3", 7, "7.00", "c2")
    shop.write_orders("west")
    outcome = load(warehouse, shop)
    assert outcome.status == "failed"
    assert f"{EAST} line 3: not valid UTF-8" in (outcome.error or "")
    assert partition(warehouse, "east") == east_before
    assert {r["id"] for r in view(warehouse, "orders") if r["shop"] == "west"} == {
        "1", "2", "3"}


def test_an_extra_column_spelled_in_another_case_by_another_file_keeps_its_values(
        warehouse: Warehouse, tmp_path: Path) -> None:
    """When one file added the extra column ``Note`` and another file has ``note``, the
    second file's values are loaded into that column (or the file fails), never
    silently dropped."""
    shop = sample_shop(tmp_path / "data")
    assert load(warehouse, shop, "full").status == "succeeded"
    shop.csv_path("east").write_text("id,qty,price,cust,Note\n1,2,3.50,c1,hello\n")
    assert load(warehouse, shop).status == "succeeded"
    shop.csv_path("west").write_text("id,qty,price,cust,note\n1,5,2.00,c3,world\n")
    outcome = load(warehouse, shop)
    if outcome.status == "succeeded":
        notes = {(r["shop"], r["id"]): r["Note"] for r in view(warehouse, "orders")}
        assert notes == {("east", "1"): "hello", ("west", "1"): "world"}
    else:
        assert WEST in (outcome.error or "") and "note" in (outcome.error or "")


@pytest.mark.postgres
def test_a_first_load_on_postgresql_leaves_indexes_and_no_defaults(pg_url: str,
                                                                  tmp_path: Path) -> None:
    """The first load builds the indexes after its COPY and fills the stamps through
    temporary defaults: afterwards the key is enforced, every index exists again, no
    column has a default, and every stamp is the run's timestamp."""
    wh = Warehouse(pg_url)
    try:
        shop = sample_shop(tmp_path)
        assert load(wh, shop).status == "succeeded"
        with wh.begin() as conn:
            indexes = set(conn.execute(sa.text(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'orders_tracked'"
                " AND schemaname = current_schema()")).scalars())
            defaults = conn.execute(sa.text(
                "SELECT count(*) FROM information_schema.columns WHERE table_schema ="
                " current_schema() AND table_name = 'orders_tracked'"
                " AND column_default IS NOT NULL")).scalar_one()
            run_ts = conn.execute(sa.text("SELECT max(run_ts) FROM loader_runs")).scalar()
            stamps = set(conn.execute(sa.text(
                "SELECT DISTINCT unnest(ARRAY[_changed_at_qty, _changed_at_price,"
                " _changed_at_cust, _changed_at, _live_since]) FROM orders_tracked")).scalars())
            with pytest.raises(sa.exc.IntegrityError), conn.begin_nested():
                conn.execute(sa.text(
                    "INSERT INTO orders_tracked (shop, id, _changed_at, _live_since)"
                    " SELECT shop, id, _changed_at, _live_since FROM orders_tracked"
                    " LIMIT 1"))
        assert indexes == {"orders_tracked_pkey", "ix_orders_changed"}
        assert defaults == 0
        assert stamps == {run_ts}
    finally:
        wh.dispose()
