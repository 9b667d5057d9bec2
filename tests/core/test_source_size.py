"""A reload of a file whose size differs from the last load's reads the stored row
hashes while the file is hashed on another thread; the outcome is that of any reload."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from loader import Warehouse, run_sequence
from loader.processors import csv_extract

from .test_csv_reload import extract, new_warehouse, state


@pytest.fixture
def digests(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """For each file digest computed: whether it ran on the calling (main) thread."""
    seen: list[bool] = []
    original = csv_extract._file_digest

    def spy(path: Path, **options: Any) -> Any:
        seen.append(threading.current_thread() is threading.main_thread())
        return original(path, **options)

    monkeypatch.setattr(csv_extract, "_file_digest", spy)
    return seen


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """For each file digest computed: whether it counted the file's lines."""
    seen: list[bool] = []
    original = csv_extract._file_digest

    def spy(path: Path, count_lines: bool = True) -> Any:
        found = original(path, count_lines=count_lines)
        seen.append(found.line_feeds is not None)
        return found

    monkeypatch.setattr(csv_extract, "_file_digest", spy)
    return seen


def run(wh: Warehouse, directory: Path, text: str) -> Any:
    (directory / "items_a.csv").write_text(text)
    return run_sequence(wh, [extract()], params={"data_dir": str(directory)})


def sizes(wh: Warehouse) -> list[Any]:
    with wh.begin() as conn:
        return list(conn.execute(sa.text("SELECT size FROM loader_sources")).scalars())


def test_a_file_of_another_size_is_hashed_beside_the_stored_hashes(
        warehouse: Warehouse, tmp_path: Path, digests: list[bool]) -> None:
    first = "id,v\n1,a\n2,b\n3,c\n"
    assert run(warehouse, tmp_path, first).status == "succeeded"
    assert sizes(warehouse) == [len(first)] and digests == [True]

    grown = "id,v\n1,a\n2,bb\n4,d\n"  # one changed, one gone, one new
    assert run(warehouse, tmp_path, grown).status == "succeeded"
    assert digests == [True, False] and sizes(warehouse) == [len(grown)]
    same_size = "id,v\n1,a\n2,xy\n4,e\n"
    assert run(warehouse, tmp_path, same_size).status == "succeeded"
    # Hashed without counting lines, found changed, then read again counting them.
    assert digests == [True, False, True, True]
    unchanged = run(warehouse, tmp_path, same_size)
    assert unchanged.results["items_csv"].details["unchanged"] == ["items_a.csv"]
    assert digests == [True, False, True, True, True]

    dialect = warehouse.engine.dialect.name
    with new_warehouse(dialect, tmp_path) as fresh:
        other = tmp_path / "fresh"
        other.mkdir()
        assert run(fresh, other, same_size).status == "succeeded"
        assert state(warehouse) == state(fresh)


def test_a_nul_in_a_file_of_another_size_fails_naming_its_line(
        warehouse: Warehouse, tmp_path: Path, digests: list[bool]) -> None:
    assert run(warehouse, tmp_path, "id,v\n1,a\n2,b\n").status == "succeeded"
    before = state(warehouse)
    outcome = run(warehouse, tmp_path, "id,v\n1,a\n2,b\x00\n3,c\n")
    assert digests == [True, False]
    assert outcome.status == "failed"
    assert "items_a.csv" in (outcome.error or "") and "line 3" in (outcome.error or "")
    assert state(warehouse) == before


def test_a_nul_in_a_changed_file_of_the_same_size_fails_naming_its_line(
        warehouse: Warehouse, tmp_path: Path, counted: list[bool]) -> None:
    """A file of the same size is hashed without counting its lines; once found changed,
    it is counted, and a NUL fails it as in any other file."""
    assert run(warehouse, tmp_path, "id,v\n1,a\n2,b\n").status == "succeeded"
    before = state(warehouse)
    assert run(warehouse, tmp_path, "id,v\n1,a\n2,b\n").status == "succeeded"
    assert counted == [True, False]  # the unchanged file: hashed, not counted
    outcome = run(warehouse, tmp_path, "id,v\n1,a\n2,\x00\n")
    assert counted == [True, False, False, True]
    assert outcome.status == "failed"
    assert "items_a.csv" in (outcome.error or "") and "line 3" in (outcome.error or "")
    assert state(warehouse) == before


def test_a_load_recorded_without_a_size_reloads_and_records_it(
        warehouse: Warehouse, tmp_path: Path, digests: list[bool]) -> None:
    """Loads recorded before the size was (migration 0002) take the ordinary path."""
    assert run(warehouse, tmp_path, "id,v\n1,a\n").status == "succeeded"
    with warehouse.begin() as conn:
        conn.execute(sa.text("UPDATE loader_sources SET size = NULL"))
    assert run(warehouse, tmp_path, "id,v\n1,a\n2,b\n").status == "succeeded"
    assert digests == [True, True, True]  # on this thread: hashed, then counted
    assert sizes(warehouse) == [len("id,v\n1,a\n2,b\n")]
    assert state(warehouse)[0] == [("a", "1", "a"), ("a", "2", "b")]


def test_migration_0002_adds_the_size_to_recorded_loads(warehouse_url: str) -> None:
    """A warehouse at revision 0001 keeps its recorded loads through the upgrade (with
    no size) and through the downgrade."""
    from alembic import command

    from loader import migrate

    engine = sa.create_engine(warehouse_url)
    try:
        migrate.upgrade(engine, "0001")
        row = {"processor": "p", "source": "s.csv", "partition": "s", "content_hash": "h",
               "header": "id", "run_id": 1, "loaded_at": "2026-11-30 06:00:00"}
        with engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO loader_sources (processor, source, partition, content_hash,"
                " header, run_id, loaded_at) VALUES (:processor, :source, :partition,"
                " :content_hash, :header, :run_id, :loaded_at)"), row)
        migrate.upgrade(engine, "0002")
        assert migrate.current_revision(engine) == "0002"
        with engine.begin() as conn:
            assert conn.execute(sa.text(
                "SELECT processor, content_hash, size FROM loader_sources")).all() == [
                ("p", "h", None)]
        config = migrate.alembic_config()
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0001")
        with engine.begin() as conn:
            assert "size" not in {c["name"] for c in sa.inspect(conn).get_columns(
                "loader_sources")}
            assert conn.execute(sa.text("SELECT content_hash FROM loader_sources")
                                ).scalars().all() == ["h"]
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_first_loads_are_analysed_once_after_the_last_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three partitions loaded for the first time: the table is analysed once, after
    the last of them, and the planner knows every row. A reload analyses nothing."""
    from loader import bulk

    analysed: list[str] = []
    original = bulk.analyze

    def spy(conn: sa.Connection, table: Any) -> None:
        name = table if isinstance(table, str) else table.name
        if not name.startswith("_stage"):
            analysed.append(name)
        original(conn, table)

    monkeypatch.setattr(bulk, "analyze", spy)
    with new_warehouse("postgresql", tmp_path) as wh:
        for part in "abc":
            (tmp_path / f"items_{part}.csv").write_text(
                "id,v\n" + "".join(f"{n},{part}\n" for n in range(40)))
        outcome = run_sequence(wh, [extract()], params={"data_dir": str(tmp_path)})
        assert outcome.status == "succeeded", outcome.error
        assert analysed == ["items_tracked"]
        with wh.begin() as conn:
            assert conn.execute(sa.text(
                "SELECT reltuples FROM pg_class WHERE oid = 'items_tracked'::regclass")
            ).scalar_one() == 120
        (tmp_path / "items_b.csv").write_text("id,v\n1,b\n")
        outcome = run_sequence(wh, [extract()], params={"data_dir": str(tmp_path)})
        assert outcome.status == "succeeded", outcome.error
        assert analysed == ["items_tracked"]
