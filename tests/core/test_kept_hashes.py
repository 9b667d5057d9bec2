"""A reload keeps the hashes of its partition's live rows with the load's record, and the
next refresh of the file takes them from there instead of reading the table; a full run
reads the table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from loader import Warehouse, run_sequence
from loader.processors import csv_extract

from .test_csv_reload import extract, kept, live, new_warehouse, state


def write(directory: Path, name: str, lines: list[str]) -> None:
    for old in directory.glob("items_*.csv"):
        old.unlink()
    (directory / name).write_text("id,v\n" + "".join(f"{x}\n" for x in lines))


def run(wh: Warehouse, directory: Path, mode: str = "refresh") -> Any:
    outcome = run_sequence(wh, [extract()], mode=mode,  # type: ignore[arg-type]
                           params={"data_dir": str(directory)})
    assert outcome.status == "succeeded", outcome.error
    return outcome


def assert_as_first_load(wh: Warehouse, tmp_path: Path, lines: list[str]) -> None:
    """``wh`` holds what a new warehouse holds after loading only ``lines``."""
    with new_warehouse(wh.engine.dialect.name, tmp_path) as fresh:
        other = tmp_path / "fresh"
        other.mkdir()
        write(other, "items_a.csv", lines)
        run(fresh, other)
        assert state(wh) == state(fresh)


@pytest.fixture
def table_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per read of stored hashes from the table."""
    reads: list[int] = []
    original = csv_extract._stored_hashes

    def spy(*args: Any) -> Any:
        reads.append(1)
        return original(*args)

    monkeypatch.setattr(csv_extract, "_stored_hashes", spy)
    return reads


def test_a_refresh_takes_the_kept_hashes_and_a_full_run_reads_the_table(
        warehouse: Warehouse, tmp_path: Path, table_reads: list[int]) -> None:
    write(tmp_path, "items_a.csv", ["1,a", "2,b", "3,c"])
    run(warehouse, tmp_path)
    assert kept(warehouse, "items_a.csv") is None  # a first load keeps none
    write(tmp_path, "items_a.csv", ["1,a", "2,x", "4,d"])
    run(warehouse, tmp_path)
    assert len(table_reads) == 1
    assert kept(warehouse, "items_a.csv") == live(warehouse)
    write(tmp_path, "items_a.csv", ["1,a", "2,y", "5,e", "5,f", "3,c"])
    run(warehouse, tmp_path)
    assert len(table_reads) == 1  # taken from the kept hashes
    assert kept(warehouse, "items_a.csv") == live(warehouse)
    run(warehouse, tmp_path, mode="full")
    assert len(table_reads) == 2
    assert kept(warehouse, "items_a.csv") == live(warehouse)
    assert_as_first_load(warehouse, tmp_path, ["1,a", "2,y", "5,e", "5,f", "3,c"])


def test_an_unchanged_file_reads_no_stored_hashes(warehouse: Warehouse, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A refresh reads a file's stored hashes (kept or from the table) only once the file
    is known to have changed: an unchanged file costs its digest alone."""
    asked: list[str] = []
    original = csv_extract.CsvSnapshot._stored_hashes

    def spy(self: Any, conn: Any, ctx: Any, path: Path, value: str) -> Any:
        asked.append(path.name)
        return original(self, conn, ctx, path, value)

    monkeypatch.setattr(csv_extract.CsvSnapshot, "_stored_hashes", spy)
    write(tmp_path, "items_a.csv", ["1,a", "2,b"])
    run(warehouse, tmp_path)
    write(tmp_path, "items_a.csv", ["1,a", "2,c"])
    run(warehouse, tmp_path)
    assert asked == ["items_a.csv"] * 2 and kept(warehouse, "items_a.csv") is not None
    outcome = run(warehouse, tmp_path)
    assert asked == ["items_a.csv"] * 2
    assert outcome.results[extract().name].details.get("unchanged") == ["items_a.csv"]


def test_a_stored_line_that_loses_its_key_to_an_earlier_one_leaves_the_kept_hashes(
        warehouse: Warehouse, tmp_path: Path) -> None:
    """An unchanged line after a changed line of its key is a duplicate: the key's row
    takes the changed line, and the unchanged line's hash is no longer a live row's."""
    write(tmp_path, "items_a.csv", ["1,a", "2,b"])
    run(warehouse, tmp_path)
    write(tmp_path, "items_a.csv", ["1,a", "2,b", "3,c"])
    run(warehouse, tmp_path)
    write(tmp_path, "items_a.csv", ["2,z", "1,a", "2,b", "3,c"])
    run(warehouse, tmp_path)
    assert kept(warehouse, "items_a.csv") == live(warehouse)
    assert len(live(warehouse)) == 3


def test_a_partition_loaded_from_a_file_named_in_another_case_drops_the_kept_hashes(
        warehouse: Warehouse, tmp_path: Path) -> None:
    """Hashes kept for items_a.csv would say row 2 is live after items_A.csv deleted it;
    they are dropped when items_A.csv loads, so items_a.csv coming back reads the table
    and brings row 2 back, as a first load of it would."""
    write(tmp_path, "items_a.csv", ["1,a", "2,b"])
    run(warehouse, tmp_path)
    write(tmp_path, "items_a.csv", ["1,a", "2,c"])
    run(warehouse, tmp_path)
    assert kept(warehouse, "items_a.csv") is not None
    write(tmp_path, "items_A.csv", ["1,x"])
    run(warehouse, tmp_path)
    assert kept(warehouse, "items_a.csv") is None
    assert kept(warehouse, "items_A.csv") == live(warehouse)
    write(tmp_path, "items_a.csv", ["1,x", "2,c"])
    run(warehouse, tmp_path)
    assert kept(warehouse, "items_a.csv") == live(warehouse)
    assert_as_first_load(warehouse, tmp_path, ["1,x", "2,c"])


def test_loads_recorded_before_migration_0004_read_the_table_once(
        warehouse: Warehouse, tmp_path: Path, table_reads: list[int]) -> None:
    """Down to 0003 the kept hashes go; back at the head a refresh reads the table, keeps
    the hashes again, and loads what a first load would."""
    from alembic import command

    from loader import migrate

    write(tmp_path, "items_a.csv", ["1,a", "2,b"])
    run(warehouse, tmp_path)
    write(tmp_path, "items_a.csv", ["1,a", "2,c"])
    run(warehouse, tmp_path)
    assert kept(warehouse) is not None and len(table_reads) == 1
    config = migrate.alembic_config()
    with warehouse.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0003")
    with warehouse.engine.begin() as conn:
        assert "row_hashes" not in {c["name"] for c in sa.inspect(conn).get_columns(
            "loader_sources")}
        assert conn.execute(sa.text("SELECT source FROM loader_sources")).scalars().all() \
            == ["items_a.csv"]
    migrate.upgrade(warehouse.engine)
    assert kept(warehouse) is None
    write(tmp_path, "items_a.csv", ["2,c", "3,d"])
    run(warehouse, tmp_path)
    assert len(table_reads) == 2
    assert kept(warehouse) == live(warehouse)
    assert_as_first_load(warehouse, tmp_path, ["2,c", "3,d"])
