"""A full run of a SQL derive on PostgreSQL that changes most rows of a big table writes
the table anew and swaps it in, instead of updating the rows in place.

The thresholds are lowered so that small tables take that path. A second warehouse
keeps them out of reach and updates in place; after every run, both must hold the same
rows, every stamp included, report the same counts, and keep the same indexes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import warehouse_on
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from loader import CsvSnapshot, Derive, Field, Lookup, Warehouse, cols, meta, run_sequence
from loader.bulk import postgresql as pg_bulk
from loader.coltypes import round_half_even
from loader.processors import derive as derive_module
from loader.sources.csvfile import parse_date, parse_decimal, parse_int, parse_timestamp
from loader.tracking import require_table

pytestmark = pytest.mark.postgres

EVENTS = CsvSnapshot(name="events_file", table="events", pattern="events_{part}.csv",
                     key=("part", "id"),
                     fields=(Field("id"), Field("at", "timestamp", parse_timestamp),
                             Field("qty", "integer", parse_int),
                             Field("price", "decimal:2", parse_decimal(2))))
RATES = CsvSnapshot(name="rates_file", table="rates", pattern="rates_{part}.csv",
                    key=("part", "day"), fields=(Field("day", "date", parse_date),
                                                 Field("rate", "decimal:2", parse_decimal(2))))
VALUES = Derive(
    "event_values", "events", ("at", "qty", "price"),
    cols("day:date, rate:decimal:2, total:decimal:2, total_aud:decimal:2"),
    lookups=(Lookup.of("r", "rates", {"part": "part", "day": "day"}, ["rate"]),),
    sql={"day": lambda c: sa.func.date(c["at"]), "rate": lambda c: c["r.rate"],
         "total": lambda c: c["qty"] * c["price"],
         "total_aud": lambda c: round_half_even(c["total"] * c["rate"], 2)})
PARTS = ("x", "y")
DAYS = ("2026-01-01", "2026-01-02", "2026-01-03")


@contextlib.contextmanager
def paths(monkeypatch: pytest.MonkeyPatch, swap: bool) -> Iterator[list[str]]:
    """Thresholds that send every full run of a big enough change to the swap (or none),
    and the physical tables swapped, as they are."""
    swapped: list[str] = []
    original = pg_bulk.swapped

    @contextlib.contextmanager
    def spy(conn: sa.Connection, table: str, show: Any) -> Iterator[pg_bulk.Swap]:
        swapped.append(table)
        with original(conn, table, show) as swap:
            yield swap

    with monkeypatch.context() as patch:
        patch.setattr(derive_module, "REWRITE_AT_LEAST", 1 if swap else 10**12)
        patch.setattr(derive_module, "REWRITE_SHARE", 0.0)
        patch.setattr(pg_bulk, "swapped", spy)
        yield swapped


def rows(wh: Warehouse) -> list[tuple[Any, ...]]:
    """Every row of the physical table, tracking columns included, with each run
    timestamp replaced by the run's ordinal, so that two warehouses compare."""
    with wh.begin() as conn:
        ordinal = {ts: n for n, ts in enumerate(conn.execute(
            sa.select(meta.runs.c.run_ts).order_by(meta.runs.c.run_id)).scalars())}
        t = require_table(conn, "events").table
        found = conn.execute(sa.select(t).order_by(t.c.part, t.c.id))
        names = list(found.keys())
        return [tuple((name, ordinal.get(v, v) if isinstance(v, datetime) and
                       name.startswith("_") else v) for name, v in zip(names, row, strict=True))
                for row in found]


def indexes(wh: Warehouse) -> set[tuple[str, str]]:
    with wh.begin() as conn:
        return {(r[0], r[1]) for r in conn.execute(sa.text(
            "SELECT indexname, split_part(indexdef, ' USING ', 2) FROM pg_indexes"
            " WHERE schemaname = current_schema() AND tablename = 'events_tracked'"))}


def leftovers(wh: Warehouse) -> list[str]:
    with wh.begin() as conn:
        return list(conn.execute(sa.text(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            " AND tablename LIKE '\\_loader\\_%'")).scalars())


def write(data: Path, events: dict[tuple[str, str], tuple[str, int | str, str]],
          rates: dict[tuple[str, str], str]) -> None:
    for part in PARTS:
        (data / f"events_{part}.csv").write_text("id,at,qty,price\n" + "".join(
            f"{i},{at},{qty},{price}\n" for (p, i), (at, qty, price) in sorted(events.items())
            if p == part))
        (data / f"rates_{part}.csv").write_text("day,rate\n" + "".join(
            f"{day},{rate}\n" for (p, day), rate in sorted(rates.items()) if p == part))


def run(wh: Warehouse, data: Path, mode: str) -> dict[str, Any]:
    outcome = run_sequence(wh, [EVENTS, RATES, VALUES],  # type: ignore[list-item]
                           mode=mode, params={"data_dir": str(data)})
    assert outcome.status == "succeeded", outcome.error
    result = outcome.results["event_values"]
    return {k: getattr(result, k) for k in ("rows_read", "updated", "changes")}


keys = st.tuples(st.sampled_from(PARTS), st.sampled_from("abcdefgh"))
# Empty fields make outputs NULL: a table may have no output set at all.
events_st = st.dictionaries(keys, st.tuples(
    st.sampled_from([f"{d}T{h}:30:00Z" for d in DAYS for h in ("01", "23")] + [""]),
    st.one_of(st.integers(0, 5), st.just("")), st.sampled_from(["0.10", "1.25", "3.00", ""])),
    min_size=1, max_size=12)
rates_st = st.dictionaries(st.tuples(st.sampled_from(PARTS), st.sampled_from(DAYS)),
                           st.sampled_from(["0.50", "1.10", "1.33"]), max_size=6)


# A first state of the events and rates, one or two edits, and the mode of each run.
given_histories = given(
    first=st.tuples(events_st, rates_st),
    edits=st.lists(st.tuples(st.none() | events_st, st.none() | rates_st), min_size=1,
                   max_size=2),
    modes=st.lists(st.sampled_from(["full", "refresh"]), min_size=3, max_size=3))


def history(data: Path, first: tuple[dict[Any, Any], dict[Any, Any]],
            edits: list[tuple[dict[Any, Any] | None, dict[Any, Any] | None]],
            modes: list[str]) -> Iterator[tuple[int, str]]:
    """Write the events and rates at first and after each edit (None keeps them) into
    ``data``; after each, the step's number and the mode to run in (the first: full)."""
    events, rates = first
    for n, (new_events, new_rates) in enumerate([(None, None), *edits]):
        events = events if new_events is None else new_events
        rates = rates if new_rates is None else new_rates
        write(data, events, rates)
        yield n, "full" if n == 0 else modes[n]


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@example(first=({("x", "a"): ("2026-01-01T01:30:00Z", 2, "1.25"),
                 ("y", "b"): ("2026-01-02T23:30:00Z", "", "3.00")},
                {("x", "2026-01-01"): "1.10"}),
          edits=[(None, {("x", "2026-01-01"): "1.33", ("y", "2026-01-02"): "0.50"})],
          modes=["full", "full", "full"])  # a swap on each full run, rates alone at last
@given_histories
def test_the_swap_gives_what_updating_in_place_gives(
        tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch,
        first: tuple[dict[Any, Any], dict[Any, Any]],
        edits: list[tuple[dict[Any, Any] | None, dict[Any, Any] | None]],
        modes: list[str]) -> None:
    """Each edit replaces the events, the rates, or both (None keeps them): a change of
    rates alone re-derives rows whose own columns did not change."""
    tmp = tmp_path_factory.mktemp("swap")
    data = tmp / "data"
    data.mkdir()
    with warehouse_on("postgresql", tmp) as in_place, warehouse_on("postgresql", tmp) as swap:
        for n, mode in history(data, first, edits, modes):
            with paths(monkeypatch, swap=False) as none:
                expected = run(in_place, data, mode)
            assert none == []
            with paths(monkeypatch, swap=True) as swapped:
                got = run(swap, data, mode)
            assert got == expected, n
            assert rows(swap) == rows(in_place), n
            if mode == "full" and expected["updated"]:
                assert swapped == ["events_tracked"], n
            else:
                assert swapped == [], n
            # Over a correct warehouse, a full run writes nothing, on either path.
            with paths(monkeypatch, swap=True) as swapped:
                assert run(swap, data, "full")["updated"] == 0
            assert swapped == []
            run(in_place, data, "full")
            assert rows(swap) == rows(in_place), n
        assert indexes(swap) == indexes(in_place)
        assert ("events_tracked_pkey", "btree (part, id)") in indexes(swap)
        assert leftovers(swap) == []


def test_what_depends_on_the_table_keeps_it_updated_in_place(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A view of the user's own over the physical table would be dropped with it: the
    derive updates in place instead, and the view is still there, showing the outputs."""
    data = tmp_path / "data"
    data.mkdir()
    write(data, {("x", "a"): ("2026-01-01T01:30:00Z", 2, "1.25")},
          {("x", "2026-01-01"): "1.10"})
    with warehouse_on("postgresql", tmp_path) as wh, \
            warehouse_on("postgresql", tmp_path) as other:
        with paths(monkeypatch, swap=True) as swapped:
            run(other, data, "full")
        assert swapped == ["events_tracked"]
        assert run_sequence(wh, [EVENTS, RATES], mode="full",  # type: ignore[list-item]
                            params={"data_dir": str(data)}).status == "succeeded"
        with wh.begin() as conn:
            conn.exec_driver_sql("CREATE VIEW mine AS SELECT id, qty FROM events_tracked")
        with paths(monkeypatch, swap=True) as swapped:
            assert run(wh, data, "full")["updated"] == 1
        assert swapped == []
        with wh.begin() as conn:
            conn.exec_driver_sql("CREATE OR REPLACE VIEW mine AS"
                                 " SELECT id, qty, total_aud FROM events_tracked")
        write(data, {("x", "a"): ("2026-01-01T01:30:00Z", 3, "1.25")},
              {("x", "2026-01-01"): "1.10"})
        with paths(monkeypatch, swap=True) as swapped:
            assert run(wh, data, "full")["updated"] == 1
        assert swapped == []
        with wh.begin() as conn:
            assert conn.exec_driver_sql("SELECT id, total_aud FROM mine").all() == [
                ("a", Decimal("4.12"))]  # 3 * 1.25 * 1.10 = 4.125, half-even


def test_swap_blockers_name_what_would_be_lost(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write(data, {("x", "a"): ("2026-01-01T01:30:00Z", 2, "1.25")}, {})
    with warehouse_on("postgresql", tmp_path) as wh:
        run(wh, data, "full")
        with wh.begin() as conn:
            columns = list(conn.execute(sa.text(
                "SELECT attname FROM pg_attribute WHERE attrelid = 'events_tracked'::regclass"
                " AND attnum > 0 AND NOT attisdropped")).scalars())

            def blockers(change: str) -> list[str]:
                with conn.begin_nested() as savepoint:
                    if change:
                        conn.exec_driver_sql(change)
                    found = pg_bulk.swap_blockers(conn, "events_tracked", "events", columns)
                    savepoint.rollback()
                return found

            assert blockers("") == []
            assert blockers("CREATE VIEW mine AS SELECT id FROM events_tracked") == [
                "rule _RETURN on view mine"]
            assert blockers("CREATE TABLE refs (part text, id text, FOREIGN KEY (part, id)"
                            " REFERENCES events_tracked (part, id))") == [
                "constraint refs_part_id_fkey on table refs"]
            for change in ("GRANT SELECT ON events_tracked TO PUBLIC",
                           "COMMENT ON TABLE events_tracked IS 'mine'",
                           "ALTER TABLE events_tracked SET (fillfactor = 70)",
                           "ALTER TABLE events_tracked ALTER COLUMN id SET (n_distinct = 5)",
                           "ALTER TABLE events_tracked ALTER COLUMN id SET STATISTICS 500",
                           # the copy and the view would be made in another schema
                           "CREATE SCHEMA elsewhere; SET LOCAL search_path = elsewhere, "
                           + conn.exec_driver_sql("SELECT current_schema()").scalar_one()):
                assert blockers(change) == ["table settings"], change
            assert pg_bulk.swap_blockers(conn, "events_tracked", "events", columns[1:]) == [
                f"column {columns[0]} is not written"]


def test_a_failed_swap_leaves_the_table_as_it_was(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    data.mkdir()
    first = {("x", "a"): ("2026-01-01T01:30:00Z", 2, "1.25"),
             ("y", "b"): ("2026-01-02T23:30:00Z", 1, "3.00")}
    write(data, first, {("x", "2026-01-01"): "1.10"})
    with warehouse_on("postgresql", tmp_path) as wh, \
            warehouse_on("postgresql", tmp_path) as in_place:
        with paths(monkeypatch, swap=False):
            run(in_place, data, "full")
        with paths(monkeypatch, swap=True):
            run(wh, data, "full")
        before, built = rows(wh), indexes(wh)
        write(data, first, {("x", "2026-01-01"): "1.20", ("y", "2026-01-02"): "0.50"})

        def fail(*args: Any) -> None:
            raise RuntimeError("lost the connection while showing the new table")

        with paths(monkeypatch, swap=True) as swapped:
            monkeypatch.setattr(derive_module, "create_view", fail)
            outcome = run_sequence(wh, [EVENTS, RATES, VALUES],  # type: ignore[list-item]
                                   mode="full", params={"data_dir": str(data)})
            monkeypatch.undo()
        assert swapped == ["events_tracked"]
        assert outcome.status == "failed" and "showing the new table" in (outcome.error or "")
        # The rates were reloaded; the derive's table is as it was, with its indexes.
        assert rows(wh) == before
        assert indexes(wh) == built and leftovers(wh) == []

        # The other warehouse loads the same files without the derive, then both run whole.
        assert run_sequence(in_place, [EVENTS, RATES], mode="full",  # type: ignore[list-item]
                            params={"data_dir": str(data)}).status == "succeeded"
        with paths(monkeypatch, swap=True):
            run(wh, data, "full")
        with paths(monkeypatch, swap=False):
            run(in_place, data, "full")
        assert rows(wh) == rows(in_place)
