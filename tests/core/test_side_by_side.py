"""Reloads that change nothing of the table load side by side, each file on its own
connection; the warehouse ends exactly as if the files had loaded one by one. On SQLite
only refreshes from kept hashes do, each reading its file before it takes the write
lock."""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import pg_schema_url
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from loader import CsvSnapshot, Field, Warehouse, meta, run_sequence
from loader.execute import RunOutcome
from loader.processors import csv_extract
from loader.sources.csvfile import parse_int
from loader.tracking import load_table

PG = pytest.mark.postgres
DIALECTS = ["sqlite", pytest.param("postgresql", marks=PG)]

PARTS = ("a", "b", "c")
# A record: an id from a small range (so that rows change, go and come back), and a
# number that is sometimes not one (a reject).
RECORDS = st.tuples(st.integers(1, 12), st.one_of(st.integers(0, 99).map(str),
                                                   st.sampled_from(["x", ""])))
# One round: the records of each file (None: the file is left as it was), and whether
# file c names an extra column.
ROUNDS = st.lists(st.tuples(st.lists(st.one_of(st.none(), st.lists(RECORDS, max_size=10)),
                                     min_size=3, max_size=3), st.booleans()),
                  min_size=1, max_size=3)


class OneByOne(CsvSnapshot):
    """The same extract, loading its files one at a time."""

    def _side_by_side(self, conn: Any, files: Any, loaded: Any, full: bool) -> set[str]:
        return set()


def extract(kind: type[CsvSnapshot] = CsvSnapshot) -> CsvSnapshot:
    return kind("items_csv", "items", "items_{p}.csv", ("p", "id"),
                (Field("id"), Field("n", "integer", parse_int)))


@pytest.fixture
def threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of the thread each file's load ran on."""
    seen: list[str] = []
    original = CsvSnapshot._load_file

    def spy(self: CsvSnapshot, *args: Any, **kwargs: Any) -> Any:
        seen.append(threading.current_thread().name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CsvSnapshot, "_load_file", spy)
    return seen


def write(directory: Path, part: str, records: list[tuple[int, str]], extra: bool) -> None:
    header = "id,n,note" if extra else "id,n"
    lines = [f"{i},{n},z" if extra else f"{i},{n}" for i, n in records]
    (directory / f"items_{part}.csv").write_text("\n".join([header, *lines]) + "\n")


def run(wh: Warehouse, directory: Path, processor: CsvSnapshot, mode: str) -> RunOutcome:
    outcome = run_sequence(wh, [processor], params={"data_dir": str(directory)}, mode=mode)
    assert outcome.status == "succeeded", outcome.error
    return outcome


def state(wh: Warehouse) -> dict[str, Any]:
    """Every row of the physical table (stamps as run ordinals), the rejects, the
    recorded loads and the table's columns."""
    with wh.begin() as conn:
        ordinal = {ts: n for n, ts in enumerate(conn.execute(
            sa.select(meta.runs.c.run_ts).order_by(meta.runs.c.run_id)).scalars())}

        def plain(v: Any) -> Any:
            return ordinal.get(v, v) if isinstance(v, datetime) else v

        table = load_table(conn, "items")
        assert table is not None
        t = table.table  # typed: SQLite's integer stamps come back as timestamps
        found = conn.execute(sa.select(t).order_by(t.c.p, t.c.id))
        names = list(found.keys())
        return {
            "rows": [dict(zip(names, map(plain, row), strict=True)) for row in found],
            "rejects": conn.execute(sa.text(
                "SELECT source, line, reason, raw, run_id FROM rejects "
                "ORDER BY source, line")).all(),
            "sources": conn.execute(sa.text(
                "SELECT source, partition, content_hash, size, header, run_id "
                "FROM loader_sources ORDER BY source")).all(),
        }


def counts(outcome: RunOutcome) -> dict[str, Any]:
    result = outcome.results["items_csv"]
    return {"read": result.rows_read, "inserted": result.inserted, "updated": result.updated,
            "deleted": result.deleted, "rejected": result.rejected, "changes": result.changes,
            "details": result.details, "errors": result.errors}


@contextlib.contextmanager
def two_warehouses(dialect: str = "postgresql") -> Iterator[tuple[Warehouse, Warehouse]]:
    with contextlib.ExitStack() as stack:
        pair = []
        for _ in range(2):
            if dialect == "sqlite":
                folder = stack.enter_context(tempfile.TemporaryDirectory())
                url = f"sqlite:///{folder}/warehouse.db"
            else:
                url = stack.enter_context(contextlib.contextmanager(pg_schema_url)())
            wh = Warehouse(url)
            stack.callback(wh.dispose)
            pair.append(wh)
        yield pair[0], pair[1]


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(first=st.lists(st.lists(RECORDS, min_size=1, max_size=10), min_size=3, max_size=3),
       rounds=ROUNDS, modes=st.lists(st.sampled_from(["refresh", "full"]), min_size=3,
                                     max_size=3))
@example(first=[[(1, "1"), (2, "2")], [(1, "1")], [(3, "3"), (4, "x")]],
         rounds=[([[(1, "5"), (2, "2"), (2, "7")], [(2, "1")], [(3, "3"), (5, "")]], False),
                 ([None, [(1, "1"), (2, "1")], [(3, "4")]], True)],
         modes=["refresh", "full", "refresh"])
@example(first=[[(1, "1"), (2, "2")], [(1, "1")], [(3, "3")]],  # pooled in round 2
         rounds=[([[(1, "2")], [(1, "2"), (2, "x")], [(3, "4")]], False),
                 ([[(1, "3"), (2, "2")], [(1, "33"), (1, "4")], [(4, "44")]], False)],
         modes=["refresh", "refresh", "refresh"])
@pytest.mark.parametrize("dialect", DIALECTS)
def test_side_by_side_reloads_end_as_loads_one_by_one(
        dialect: str, tmp_path_factory: pytest.TempPathFactory, threads: list[str],
        first: list[list[tuple[int, str]]],
        rounds: list[tuple[list[list[tuple[int, str]] | None], bool]],
        modes: list[str]) -> None:
    """Drawn files are loaded, then edited (changed, gone, repeated and bad records,
    a file left alone, a new column in one file) and reloaded, by refreshes and full
    runs: the warehouse loading side by side and the one loading one file at a time end
    equal after every run, stamps, rejects, recorded loads and counts included. Files
    that reload together run on the extract's threads; a first load and a file that
    brings a new column run on the task's own thread."""
    directory = tmp_path_factory.mktemp("files")
    with two_warehouses(dialect) as (together, alone):
        for part, records in zip(PARTS, first, strict=True):
            write(directory, part, records, False)
        extra = False
        for step, (files, new_extra) in enumerate([([*first], False), *rounds]):
            mode = "full" if step == 0 else modes[step - 1]
            adds_column = False
            if step:
                for part, records in zip(PARTS, files, strict=True):
                    if records is not None:
                        write(directory, part, records, extra and part == "c")
                if new_extra and not extra and files[2] is not None:
                    write(directory, "c", files[2], True)
                    extra = adds_column = True
            expected = pooled_loads(together, directory, "c" if adds_column else None, mode)
            threads.clear()
            ours = run(together, directory, extract(), mode)
            pooled = [name for name in threads if name.startswith("items_csv")]
            theirs = run(alone, directory, extract(OneByOne), mode)
            assert counts(ours) == counts(theirs)
            assert state(together) == state(alone)
            assert len(pooled) == expected


def pooled_loads(wh: Warehouse, directory: Path, added: str | None, mode: str) -> int:
    """How many files the next run loads side by side: those of partitions with rows
    (reloads) whose file brings no new column, in runs of at least two in file order.
    On SQLite, only in a refresh, and only files of another size than recorded whose
    partition's last load kept its hashes (a reload, not a first load)."""
    with wh.begin() as conn:
        if not sa.inspect(conn).has_table("items_tracked"):
            return 0
        eligible = set(conn.execute(sa.text("SELECT DISTINCT p FROM items_tracked")).scalars())
        if wh.dialect == "sqlite":
            kept = {part for part, source, size in conn.execute(sa.text(
                "SELECT partition, source, size FROM loader_sources "
                "WHERE row_hashes IS NOT NULL")).all()
                    if (directory / source).stat().st_size != size}
            eligible &= kept if mode == "refresh" else set()
    runs: list[list[str]] = [[]]
    for part in PARTS:
        if part in eligible and part != added:
            runs[-1].append(part)
        else:
            runs.append([])
    return sum(len(run) for run in runs if len(run) > 1)


@PG
def test_a_new_column_and_a_first_load_go_alone(tmp_path: Path, threads: list[str]) -> None:
    """Of four files, the two plain reloads load together; the one naming a new column
    and the one of a new partition load after them, in file order, alone, on the task's
    thread."""
    with two_warehouses() as (wh, _):
        for part in PARTS:
            write(tmp_path, part, [(1, "1"), (2, "2")], False)
        run(wh, tmp_path, extract(), "refresh")
        write(tmp_path, "a", [(1, "3")], False)
        write(tmp_path, "b", [(2, "4")], False)
        write(tmp_path, "c", [(1, "5")], True)
        write(tmp_path, "d", [(9, "9")], False)
        threads.clear()
        with wh.begin() as conn:
            loaded = {p: csv_extract._Recorded(f"items_{p}.csv", "id,n", 9, False)
                      for p in PARTS}
            files = {p: tmp_path / f"items_{p}.csv" for p in (*PARTS, "d")}
            assert extract()._side_by_side(conn, files, loaded, False) == {"a", "b"}
        outcome = run(wh, tmp_path, extract(), "refresh")
        assert [name.startswith("items_csv") for name in threads] == [True, True, False, False]
        assert outcome.results["items_csv"].inserted == 1
        with wh.begin() as conn:
            assert conn.execute(sa.text("SELECT p, id, n, note FROM items ORDER BY p, id")
                                ).all() == [("a", "1", 3, None), ("b", "2", 4, None),
                                            ("c", "1", 5, "z"), ("d", "9", 9, None)]


@PG
def test_a_bad_file_beside_a_good_one_is_left_as_it_was(
        tmp_path: Path, threads: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that fails while another loads beside it fails alone: its rows stay as they
    were, the other's load is kept, and the run ends failed naming the file and line."""
    with two_warehouses() as (wh, _):
        for part in PARTS:
            write(tmp_path, part, [(1, "1"), (2, "2")], False)
        run(wh, tmp_path, extract(), "refresh")
        write(tmp_path, "a", [(1, "3")], False)
        (tmp_path / "items_b.csv").write_text("id,n\n1,1\n2,2\x00\n3,3\n")
        write(tmp_path, "c", [(1, "6"), (2, "2")], False)
        outcome = run_sequence(wh, [extract()], params={"data_dir": str(tmp_path)})
        assert outcome.status == "failed"
        assert "items_b.csv" in (outcome.error or "") and "line 3" in (outcome.error or "")
        assert all(name.startswith("items_csv") for name in threads[-3:])
        with wh.begin() as conn:
            assert conn.execute(sa.text("SELECT p, id, n FROM items ORDER BY p, id")).all() == [
                ("a", "1", 3), ("b", "1", 1), ("b", "2", 2), ("c", "1", 6), ("c", "2", 2)]


@PG
def test_progress_is_passed_on_from_the_task_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lines read on the extract's threads reach the task's progress, on its own thread
    (Celery reports a task's state from the task's thread only)."""
    reported: list[tuple[str, int, bool]] = []
    with two_warehouses() as (wh, _):
        for part in PARTS:
            write(tmp_path, part, [(i, "1") for i in range(1, 13)], False)
        run(wh, tmp_path, extract(), "refresh")
        for part in PARTS:
            write(tmp_path, part, [(i, "2") for i in range(1, 13)], False)
        monkeypatch.setattr(csv_extract, "PROGRESS_EVERY", 1)
        main = threading.current_thread()

        def progress(phase: str, done: int, total: int | None) -> None:
            reported.append((phase, done, threading.current_thread() is main))

        outcome = run_sequence(wh, [extract()], params={"data_dir": str(tmp_path)},
                               progress=progress)
        result = outcome.results["items_csv"]
        assert result.updated == 36
        assert reported and all(on_main for _, _, on_main in reported)
        assert {(phase, done) for phase, done, _ in reported} == {
            (f"items_csv:items_{p}.csv", 12) for p in PARTS}


@pytest.mark.parametrize(("content", "expected"), [
    (b"id,n\n1,2\n", True),
    (b"id,n\r\n1,2\r\n", True),
    (b"\xef\xbb\xbfid,n\n1,2\n", True),
    (b"id,n,note\n1,2,z\n", False),  # a column more
    (b"n,id\n2,1\n", False),
    (b"\nid,n\n1,2\n", False),  # a blank line first: read as a changed header
    (b"id,n", False),  # no line end yet
    (b"", False),
])
def test_a_file_keeps_its_header_only_when_its_first_line_is_the_recorded_one(
        tmp_path: Path, content: bytes, expected: bool) -> None:
    path = tmp_path / "items_a.csv"
    path.write_bytes(content)
    assert csv_extract._starts_with(path, "id,n") is expected
    assert csv_extract._starts_with(tmp_path / "missing.csv", "id,n") is False


def test_on_sqlite_files_read_side_by_side_hold_no_write_lock(
        tmp_path: Path, threads: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """On SQLite, two changed files of a refresh from kept hashes are read at once,
    and while they are read another connection can take the write lock at once: each
    file's load takes it only to merge."""
    data = tmp_path / "data"
    data.mkdir()
    with two_warehouses("sqlite") as (wh, _):
        for round_ in range(3):
            for part in PARTS:  # a number one digit longer each time: another size
                write(data, part, [(1, str(round_) * (round_ + 1)), (2, "2")], False)
            if round_ < 2:  # a first load, then a reload that keeps its hashes
                run(wh, data, extract(), "refresh")
        both_reading = threading.Barrier(2, timeout=10)
        took_lock: list[bool] = []
        original = csv_extract._FileLoad._each_row
        path = wh.engine.url.database

        def each_row(self: Any, *args: Any, **kwargs: Any) -> Any:
            if self.value in ("a", "b"):
                both_reading.wait()  # neither has merged yet
                other = sqlite3.connect(path, timeout=0.2, isolation_level=None)
                try:
                    other.execute("BEGIN IMMEDIATE")
                    other.execute("ROLLBACK")
                    took_lock.append(True)
                except sqlite3.OperationalError:
                    took_lock.append(False)
                finally:
                    other.close()
            return original(self, *args, **kwargs)

        monkeypatch.setattr(csv_extract._FileLoad, "_each_row", each_row)
        threads.clear()
        outcome = run(wh, data, extract(), "refresh")
        assert outcome.results["items_csv"].updated == 3
        assert took_lock == [True, True]
        assert sum(name.startswith("items_csv") for name in threads) == 3


def test_reading_first_writes_in_a_second_transaction_and_leaves_nothing_behind(
        tmp_path: Path) -> None:
    """On SQLite the reading part begins deferred, ``write`` begins the writing part on
    the same connection (its temporary tables carry over), and a block that fails
    leaves neither a temporary table nor a deferred beginning to the next user."""
    wh = Warehouse(f"sqlite:///{tmp_path}/warehouse.db")
    sent: list[str] = []
    sa.event.listen(wh.engine, "before_cursor_execute",
                    lambda conn, cursor, statement, *args: sent.append(statement))
    try:
        with wh.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE probe (x)")
        sent.clear()
        with wh.reading_first() as (conn, write):
            conn.exec_driver_sql("CREATE TEMP TABLE scratch (x)")
            conn.exec_driver_sql("INSERT INTO scratch VALUES (1)")
            write()
            conn.exec_driver_sql("INSERT INTO probe SELECT x FROM scratch")
            conn.exec_driver_sql("DROP TABLE scratch")
        assert [s for s in sent if s.startswith("BEGIN")] == ["BEGIN", "BEGIN IMMEDIATE"]
        with pytest.raises(RuntimeError), wh.reading_first() as (conn, write):
            conn.exec_driver_sql("CREATE TEMP TABLE left_behind (x)")
            write()
            conn.exec_driver_sql("DELETE FROM probe")
            raise RuntimeError("failed while writing")
        sent.clear()
        with wh.begin() as conn:
            assert conn.exec_driver_sql("SELECT name FROM sqlite_temp_master").all() == []
            assert conn.exec_driver_sql("SELECT x FROM probe").all() == [(1,)]
        assert sent[0] == "BEGIN IMMEDIATE"
    finally:
        wh.dispose()
