"""A derive on SQLite that updates most rows of a big table drops the indexes the update
writes to, and builds them again before the commit; and its SQL rounds half-even exactly.
A stage analysed on SQLite drives the join to the table it is matched with, a whole
aggregate scans its source rather than following an index, and sessions sort with helper
threads.

The thresholds are lowered so that small tables take that path. A second warehouse keeps
them out of reach and keeps its indexes while updating; after every run both must hold
the same rows, every stamp included, report the same counts, and keep the same indexes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import warehouse_on
from hypothesis import HealthCheck, example, settings

from loader import Warehouse
from loader.bulk import sqlite as sqlite_bulk
from loader.processors import derive as derive_module
from loader.processors.aggregate import Aggregate, count, sum_of
from loader.tracking import Col, TrackedTable, ensure_table

from .test_swap import given_histories, history, rows, run


@contextlib.contextmanager
def thresholds(monkeypatch: pytest.MonkeyPatch, rebuild: bool) -> Iterator[list[str]]:
    """Thresholds that send every update of a derive to the index rebuild (or none), and
    the indexes it dropped, by name."""
    dropped: list[str] = []
    original = sqlite_bulk.indexes_built_after

    @contextlib.contextmanager
    def spy(conn: Any, table: str, columns: Any) -> Iterator[None]:
        before = indexes_of(conn)
        with original(conn, table, columns):
            dropped.extend(sorted(set(before) - set(indexes_of(conn))))
            yield

    with monkeypatch.context() as patch:
        patch.setattr(derive_module, "REWRITE_AT_LEAST", 1 if rebuild else 10**12)
        patch.setattr(derive_module, "REWRITE_SHARE", 0.0)
        patch.setattr(sqlite_bulk, "indexes_built_after", spy)
        yield dropped


def indexes_of(conn: Any) -> dict[str, str]:
    return dict(conn.exec_driver_sql(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' "
        "AND tbl_name = 'events_tracked' AND sql IS NOT NULL").all())


def indexes(wh: Warehouse) -> dict[str, str]:
    with wh.begin() as conn:
        return indexes_of(conn)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@example(first=({("x", "a"): ("2026-01-01T01:30:00Z", 2, "1.25"),
                 ("y", "b"): ("2026-01-02T23:30:00Z", 3, "3.00")},
                {("x", "2026-01-01"): "1.10"}),
         edits=[(None, {("x", "2026-01-01"): "1.33", ("y", "2026-01-02"): "0.50"})],
         modes=["full", "refresh", "full"])
@given_histories
def test_rebuilding_the_indexes_gives_what_updating_them_gives(
        tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch,
        first: tuple[dict[Any, Any], dict[Any, Any]],
        edits: list[tuple[dict[Any, Any] | None, dict[Any, Any] | None]],
        modes: list[str]) -> None:
    """Each edit replaces the events, the rates, or both (None keeps them); the derive
    rounds ``total * rate`` half-even in SQL."""
    tmp = tmp_path_factory.mktemp("rebuild")
    data = tmp / "data"
    data.mkdir()
    with warehouse_on("sqlite", tmp / "kept.db") as kept, \
            warehouse_on("sqlite", tmp / "rebuilt.db") as rebuilt:
        for n, mode in history(data, first, edits, modes):
            with thresholds(monkeypatch, rebuild=False) as none:
                expected = run(kept, data, mode)
            assert none == []
            with thresholds(monkeypatch, rebuild=True) as dropped:
                got = run(rebuilt, data, mode)
            assert got == expected, n
            assert rows(rebuilt) == rows(kept), n
            if expected["updated"]:
                # _changed_at is a stamp, and (part, day), once the lookup has built
                # it, holds the output day; no other index is dropped.
                assert "ix_events_changed" in dropped, n
                assert set(dropped) <= {"ix_events__part_day", "ix_events_changed"}, n
            else:
                assert dropped == [], n
            assert indexes(rebuilt) == indexes(kept), n


def test_the_indexes_dropped_are_those_over_the_columns_written(tmp_path: Path) -> None:
    with warehouse_on("sqlite", tmp_path / "w.db") as wh, wh.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (k TEXT PRIMARY KEY, a TEXT, b TEXT, c TEXT)")
        conn.exec_driver_sql("CREATE INDEX t_a ON t (a)")
        conn.exec_driver_sql("CREATE INDEX t_bc ON t (c, b)")
        conn.exec_driver_sql("CREATE INDEX t_upper ON t (upper(c))")
        conn.exec_driver_sql("CREATE INDEX t_k ON t (k)")

        def names() -> list[str]:
            return sorted(conn.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 't' "
                "AND sql IS NOT NULL").scalars())

        with sqlite_bulk.indexes_built_after(conn, "t", ["B"]):
            # (c, b) holds b; an expression may hold anything.
            assert names() == ["t_a", "t_k"]
            conn.exec_driver_sql("INSERT INTO t VALUES ('1', 'x', 'y', 'z')")
        assert names() == ["t_a", "t_bc", "t_k", "t_upper"]
        plan = " ".join(str(r) for r in conn.exec_driver_sql(
            "EXPLAIN QUERY PLAN SELECT * FROM t WHERE c = 'z' AND b = 'y'").all())
        assert "t_bc" in plan


def test_a_stage_analysed_on_sqlite_drives_the_join(tmp_path: Path) -> None:
    """A SQLite stage gets statistics, so that its few rows look the big table up by
    index, rather than the big table being scanned to look the stage up; the tables of
    the warehouse itself are left to SQLite."""
    from loader import bulk

    with warehouse_on("sqlite", tmp_path / "w.db") as wh, wh.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE big (k INTEGER PRIMARY KEY, g TEXT, v INTEGER)")
        conn.exec_driver_sql("CREATE INDEX big_g ON big (g)")
        conn.exec_driver_sql("WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n "
                             "WHERE x < 20000) INSERT INTO big (g, v) "
                             "SELECT 'g' || (x % 5000), x FROM n")
        with bulk.stage(conn, "touched", [("g", sa.Text())], key=["g"]) as stage:
            conn.execute(sa.insert(stage), [{"g": f"g{i}"} for i in range(10)])
            bulk.analyze(conn, stage)
            plan = [row[3] for row in conn.exec_driver_sql(
                f"EXPLAIN QUERY PLAN SELECT big.g, sum(v) FROM big JOIN {stage.name} AS t "
                "ON big.g = t.g GROUP BY big.g").all()]
            assert plan[0].startswith("SCAN t"), plan
            assert any(step.startswith("SEARCH big USING INDEX big_g") for step in plan), plan
        bulk.analyze(conn, "big")
        assert conn.exec_driver_sql(
            "SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'").scalar() == 0


def test_a_whole_aggregate_reads_its_source_without_an_index(tmp_path: Path) -> None:
    """Rebuilding every group scans the source and sorts it, on SQLite, though an index
    on the group column could give the rows in group order (one lookup per row); a
    refresh of a few groups still finds their rows through that index. The totals are
    those of the rows."""
    agg = Aggregate("by_g", "big", "big_totals", ("g",), (count("n"), sum_of("v", "total")),
                    not_null=("g",))
    at = datetime(2026, 1, 1)
    with warehouse_on("sqlite", tmp_path / "w.db") as wh, wh.begin() as conn:
        source = ensure_table(conn, TrackedTable("big", (Col("k", "integer"),), (
            Col("g"), Col("v", "integer")), indexes=(("g",),)), run_id=1, now=at)
        conn.execute(sa.insert(source.table), [
            {"k": k, "g": f"g{k % 50}", "v": k, "_changed_at": at, "_live_since": at}
            for k in range(2000)])
        touched = sa.Table("touched", sa.MetaData(), sa.Column("g", sa.Text),
                           prefixes=["TEMPORARY"])
        touched.create(conn)
        conn.execute(sa.insert(touched), [{"g": "g1"}])

        def plan(query: sa.Select[Any]) -> list[str]:
            compiled = query.compile(conn, compile_kwargs={"literal_binds": True})
            return [row[3] for row in conn.exec_driver_sql(
                f"EXPLAIN QUERY PLAN {compiled}").all()]

        whole = agg._grouped(source, None)
        assert plan(whole)[0] == "SCAN big_tracked", plan(whole)
        some = plan(agg._grouped(source, touched, (False,)))
        assert any("USING INDEX ix_big__g" in step for step in some), some
        totals = {r.g: (r.n, r.total) for r in conn.execute(whole)}
        assert len(totals) == 50
        assert totals["g7"] == (40, sum(k for k in range(2000) if k % 50 == 7))


def test_sqlite_sessions_sort_with_helper_threads(tmp_path: Path) -> None:
    """Every SQLite session writes ahead to a log and lets its sorts use a helper thread
    per core, up to four (SQLite's own default is none)."""
    with warehouse_on("sqlite", tmp_path / "w.db") as wh, wh.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA threads").scalar() == min(4, os.cpu_count() or 1)
