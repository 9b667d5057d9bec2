"""Reloading a changed file gives what a first load of that file gives.

Files are drawn with repeated keys, repeated lines, changed and vanished rows and bad
records; after each reload into one warehouse, its rows and rejects must equal those
of a new warehouse that loaded only the current file.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import pg_schema_url
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loader import CsvSnapshot, Field, Warehouse, run_sequence

_dirs = itertools.count()

RECORDS = st.one_of(
    st.tuples(st.sampled_from(["1", "2", "3", "4"]), st.sampled_from(["a", "b", "", " c"]))
    .map(",".join),
    st.sampled_from(["5", ",z", "6,x,y", '7,"q,r"']),
)
FILES = st.lists(st.lists(RECORDS, max_size=8), min_size=1, max_size=3)


def extract() -> CsvSnapshot:
    return CsvSnapshot("items_csv", "items", "items_{p}.csv", ("p", "id"),
                       (Field("id"), Field("v")))


def state(wh: Warehouse) -> tuple[list[Any], list[Any]]:
    with wh.begin() as conn:
        rows = conn.execute(sa.text("SELECT p, id, v FROM items ORDER BY p, id")).all()
        rejects = conn.execute(sa.text(
            "SELECT source, line, reason, raw FROM rejects ORDER BY source, line")).all()
    return [tuple(r) for r in rows], [tuple(r) for r in rejects]


def kept(wh: Warehouse, source: str = "items_a.csv") -> set[int] | None:
    """The row hashes the last load of ``source`` kept, if it kept any."""
    from loader.processors import csv_copy

    with wh.begin() as conn:
        data = conn.execute(sa.text("SELECT row_hashes FROM loader_sources WHERE source = :s"),
                            {"s": source}).scalar_one()
    return None if data is None else set(csv_copy.hashes_from_bytes(bytes(data)))


def live(wh: Warehouse) -> set[int]:
    """The row hashes of the live rows of partition ``a``."""
    with wh.begin() as conn:
        return set(conn.execute(sa.text(
            "SELECT _row_hash FROM items_tracked WHERE p = 'a' AND _deleted_at IS NULL"
        )).scalars())


def load(wh: Warehouse, directory: Path, lines: list[str]) -> None:
    (directory / "items_a.csv").write_text("id,v\n" + "".join(f"{x}\n" for x in lines))
    outcome = run_sequence(wh, [extract()], params={"data_dir": str(directory)})
    assert outcome.status == "succeeded", outcome.error


@contextlib.contextmanager
def new_warehouse(dialect: str, base: Path) -> Iterator[Warehouse]:
    if dialect == "sqlite":
        path = base / f"wh{next(_dirs)}.db"
        wh = Warehouse(f"sqlite:///{path}")
        yield wh
        wh.dispose()
        return
    with contextlib.contextmanager(pg_schema_url)() as url:
        wh = Warehouse(url)
        yield wh
        wh.dispose()


def check_reloads(dialect: str, base: Path, files: list[list[str]]) -> None:
    here = base / f"d{next(_dirs)}"
    here.mkdir()
    with new_warehouse(dialect, base) as wh:
        for lines in files:
            load(wh, here, lines)
            assert kept(wh) in (None, live(wh)), lines
            fresh = base / f"d{next(_dirs)}"
            fresh.mkdir()
            with new_warehouse(dialect, base) as first:
                load(first, fresh, lines)
                assert state(wh) == state(first), lines


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=FILES)
def test_reloads_agree_with_a_first_load_sqlite(tmp_path: Path, files: list[list[str]]) -> None:
    check_reloads("sqlite", tmp_path, files)


@pytest.mark.postgres
@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=FILES)
def test_reloads_agree_with_a_first_load_postgresql(tmp_path: Path,
                                                    files: list[list[str]]) -> None:
    check_reloads("postgresql", tmp_path, files)


def test_a_repeated_unchanged_line_and_a_changed_line_before_it(tmp_path: Path) -> None:
    """The first record of a key wins, whether it is the stored (unchanged) line or not."""
    check_reloads("sqlite", tmp_path, [["1,a", "2,b"], ["1,a", "2,c", "1,a", "2,b"],
                                       ["2,b", "1,x", "1,a"]])


def test_many_repeated_lines_and_texts_read_again(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Sixty repeated lines, with no record text kept: the rejects still name each
    later line with its text, as a first load does."""
    from loader.processors import csv_extract

    lines = [f"{n},v{n}" for n in range(60)]
    monkeypatch.setattr(csv_extract, "RAWS_KEPT", 0)
    check_reloads("sqlite", tmp_path, [lines, [*lines, *reversed(lines)],
                                       [f"{n},w" for n in range(30)] + lines])
