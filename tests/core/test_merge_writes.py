"""A merge writes only where it must, and what it skips changes nothing.

A merge first counts the staged rows that differ: when none does, it sends no
UPDATE. ``delete_missing`` after a merge compares two counts before looking for
missing rows with an anti-join. Both give exactly what the unconditional
statements give. And a merge analyses its table only once it has written a tenth
of it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Connection

from loader import Warehouse, bulk
from loader import merge as merge_module
from loader.merge import MergeCounts, delete_missing, upsert
from loader.tracking import Col, TrackedTable, ensure_table

TABLE = TrackedTable("items", (Col("k"),), (Col("n", "integer"),), nullable_key=True)
KEY_ONLY = TrackedTable("tags", (Col("k"),), ())
DAY = [datetime(2026, 11, d, 6, 0, 0) for d in range(1, 5)]
UPDATE = re.compile(r"UPDATE (items|tags)_tracked SET")

Rows = list[tuple[Any, ...]]


@contextmanager
def rolled_back(wh: Warehouse) -> Iterator[Connection]:
    with wh.engine.connect() as conn, conn.begin() as transaction:
        yield conn
        transaction.rollback()


def merge(conn: Connection, table: TrackedTable, rows: Rows, at: datetime, *,
          delete: bool = False, merged: bool = True) -> MergeCounts:
    """Upsert ``rows`` into ``table`` at ``at``; with ``delete``, delete the rest."""
    tracked = ensure_table(conn, table, run_id=None, now=at)
    types = {"text": sa.Text(), "integer": sa.BigInteger()}
    columns = [(c.name, types[c.type]) for c in table.all_columns]
    with bulk.stage(conn, table.name, columns, key=table.key_names) as stage:
        staged = bulk.load(conn, stage, rows)
        counts = upsert(conn, tracked, stage, list(table.column_names), at)
        if delete:
            counts.deleted = delete_missing(conn, tracked, stage, at,
                                            merged=staged if merged else None)
    return counts


def contents(conn: Connection, table: TrackedTable) -> Rows:
    t = ensure_table(conn, table, run_id=None, now=DAY[0]).table
    return [tuple(r) for r in conn.execute(sa.select(t).order_by(*t.c)).all()]


def test_merging_what_the_table_holds_sends_no_update(warehouse: Warehouse,
                                                      statements: list[str]) -> None:
    with rolled_back(warehouse) as conn:
        merge(conn, TABLE, [("a", 1), ("b", 2), (None, 3)], DAY[0])
        before = contents(conn, TABLE)
        statements.clear()
        counts = merge(conn, TABLE, [("a", 1), ("b", 2), (None, 3)], DAY[1], delete=True)
        assert counts == MergeCounts()
        assert not [s for s in statements if UPDATE.match(s)]
        assert contents(conn, TABLE) == before
        counts = merge(conn, TABLE, [("a", 1), ("b", 5), (None, 3)], DAY[2])
        assert (counts.updated, counts.changes) == (1, {"n": 1})
        assert len([s for s in statements if UPDATE.match(s)]) == 1


def test_a_row_of_a_key_only_table_comes_back_alive(warehouse: Warehouse) -> None:
    """A table with no column but its key: a row deleted by a full merge and staged
    again is revived like any other."""
    with rolled_back(warehouse) as conn:
        merge(conn, KEY_ONLY, [("a",), ("b",)], DAY[0], delete=True)
        assert merge(conn, KEY_ONLY, [("a",)], DAY[1], delete=True).deleted == 1
        assert merge(conn, KEY_ONLY, [("a",), ("b",)], DAY[2], delete=True).updated == 1
        t = ensure_table(conn, KEY_ONLY, run_id=None, now=DAY[0]).table
        assert conn.execute(sa.select(t.c.k, t.c._deleted_at, t.c._live_since)
                            .order_by(t.c.k)).all() == [("a", None, DAY[0]),
                                                        ("b", None, DAY[2])]


keys = st.sampled_from(["a", "b", "c", "d", None])
stages = st.lists(st.tuples(keys, st.none() | st.integers(0, 2)),
                  unique_by=lambda row: row[0], max_size=5)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=st.lists(stages, min_size=2, max_size=4))
def test_deleting_after_a_merge_counts_first_and_deletes_the_same(
        warehouse: Warehouse, history: list[Rows]) -> None:
    """Full merges one after another (rows come, change, go and come back): deleting
    with ``merged`` leaves the table as the anti-join alone does, with the same counts."""
    results = []
    for merged in (True, False):
        with rolled_back(warehouse) as conn:
            counts = [merge(conn, TABLE, rows, DAY[i], delete=True, merged=merged)
                      for i, rows in enumerate(history)]
            results.append((counts, contents(conn, TABLE)))
    assert results[0] == results[1]


@pytest.mark.postgres
def test_a_merge_analyses_the_table_after_writing_a_tenth_of_it(
        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL's statistics are refreshed after a merge that writes as many rows as
    ``ANALYZE_AFTER`` and a tenth of the rows the table had when last analysed: not
    after one that updates fewer in place."""
    monkeypatch.setattr(merge_module, "ANALYZE_AFTER", 5)
    wh = Warehouse(pg_url)
    analysed = re.compile(r"ANALYZE \"?items_tracked")
    sent: list[str] = []
    sa.event.listen(wh.engine, "before_cursor_execute",
                    lambda conn, cursor, statement, *args: sent.append(statement))
    try:
        with rolled_back(wh) as conn:
            merge(conn, TABLE, [(f"k{i:03}", 0) for i in range(200)], DAY[0])
            assert [s for s in sent if analysed.match(s)]  # 200 rows, none before
            sent.clear()
            merge(conn, TABLE, [(f"k{i:03}", 1) for i in range(15)], DAY[1])
            assert not [s for s in sent if analysed.match(s)]  # 15 of 200
            merge(conn, TABLE, [(f"k{i:03}", 2) for i in range(25)], DAY[2])
            assert [s for s in sent if analysed.match(s)]  # 25 of 200
    finally:
        wh.dispose()
