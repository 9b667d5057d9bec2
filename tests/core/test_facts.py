"""A value remembered over a table is the value computed now, whatever wrote to the
table in between: the loader, a hand edit from another session, a rolled-back write,
the table dropped and made again; and it is not computed again when nothing did."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import PG_URL
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loader import Warehouse, facts, meta
from loader.bulk import postgresql as pg_bulk

TABLE = "things"


@pytest.fixture
def pg(pg_url: str) -> Iterator[tuple[Warehouse, sa.Engine]]:
    """A PostgreSQL warehouse with ``things`` (1, 2, 3), and an engine on the same database
    whose sessions have the default search_path, as a hand edit from psql would."""
    wh = Warehouse(pg_url)
    other = sa.create_engine(PG_URL)
    with wh.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE {TABLE} (n integer)")
        conn.exec_driver_sql(f"INSERT INTO {TABLE} VALUES (1), (2), (3)")
    try:
        yield wh, other
    finally:
        other.dispose()
        wh.dispose()


class Totals:
    """``remember`` the sum and count of ``things``, counting the scans."""

    def __init__(self, wh: Warehouse) -> None:
        self.wh = wh
        self.scans = 0

    def now(self) -> list[int]:
        with self.wh.begin() as conn:
            return self._scan(conn)

    def _scan(self, conn: sa.Connection) -> list[int]:
        self.scans += 1
        total, rows = conn.exec_driver_sql(
            f"SELECT coalesce(sum(n), 0), count(*) FROM {TABLE}").one()
        return [int(total), int(rows)]

    def remember(self) -> facts.Fact:
        with self.wh.begin() as conn:
            return facts.remembered(conn, TABLE, "totals", lambda: self._scan(conn), run_id=7)


def schema_of(wh: Warehouse) -> str:
    with wh.engine.connect() as conn:
        return str(conn.exec_driver_sql("SELECT current_schema()").scalar_one())


@pytest.mark.postgres
@pytest.mark.parametrize("write", [
    "INSERT INTO {t} VALUES (5)",
    "UPDATE {t} SET n = n + 1 WHERE n = 1",
    "DELETE FROM {t} WHERE n = 2",
    "TRUNCATE {t}",
    "UPDATE {t} SET n = n WHERE false",  # writes no row: counted all the same
])
def test_a_value_is_computed_again_after_a_hand_edit(
        pg: tuple[Warehouse, sa.Engine], write: str) -> None:
    wh, other = pg
    totals = Totals(wh)
    first = totals.remember()
    assert (first.value, first.reused, first.run_id, totals.scans) == ([6, 3], False, 7, 1)
    again = totals.remember()
    assert (again.value, again.reused, again.run_id, totals.scans) == ([6, 3], True, 7, 1)
    # From a session whose search_path does not hold the warehouse's schema.
    with other.begin() as conn:
        conn.exec_driver_sql(write.format(t=f'"{schema_of(wh)}".{TABLE}'))
    after = totals.remember()
    assert not after.reused and after.value == totals.now()


@pytest.mark.postgres
def test_a_copy_counts_as_a_write(pg: tuple[Warehouse, sa.Engine]) -> None:
    wh, _ = pg
    totals = Totals(wh)
    assert totals.remember().value == [6, 3]
    with wh.begin() as conn:
        raw: Any = conn.connection.driver_connection
        with raw.cursor().copy(f"COPY {TABLE} (n) FROM STDIN") as copy:
            copy.write_row((10,))
    after = totals.remember()
    assert (after.value, after.reused) == ([16, 4], False)


@pytest.mark.postgres
def test_a_table_made_anew_is_read_again(pg: tuple[Warehouse, sa.Engine]) -> None:
    """Dropped and made again: the trigger went with the old table, so the new table's
    writes went uncounted until a value is computed over it."""
    wh, _ = pg
    totals = Totals(wh)
    totals.remember()
    with wh.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE {TABLE}")
        conn.exec_driver_sql(f"CREATE TABLE {TABLE} (n integer)")
        conn.exec_driver_sql(f"INSERT INTO {TABLE} VALUES (1), (2), (3), (4)")
    after = totals.remember()
    assert (after.value, after.reused) == ([10, 4], False)
    assert totals.remember().reused  # the new table has its trigger now


@pytest.mark.postgres
def test_the_counting_trigger_does_not_keep_a_table_from_being_swapped(
        pg: tuple[Warehouse, sa.Engine]) -> None:
    """A derive may write a table anew and swap it in: the trigger goes with the old
    table, and the new one's sums are computed. Another trigger still keeps the table
    in place."""
    wh, _ = pg
    totals = Totals(wh)
    totals.remember()
    with wh.begin() as conn:
        assert pg_bulk.swap_blockers(conn, TABLE, "no_view", ["n"]) == []
        with pg_bulk.swapped(conn, TABLE, lambda: None) as swap:
            conn.exec_driver_sql(f"INSERT INTO {swap.fresh} SELECT n * 10 FROM {TABLE}")
    after = totals.remember()
    assert (after.value, after.reused) == ([60, 3], False)
    with wh.begin() as conn:
        conn.exec_driver_sql(
            f"CREATE TRIGGER theirs AFTER INSERT ON {TABLE} FOR EACH STATEMENT "
            "EXECUTE FUNCTION loader_count_write()")
        assert [b for b in pg_bulk.swap_blockers(conn, TABLE, "no_view", ["n"])
                if "theirs" in b] != []


@pytest.mark.postgres
def test_a_disabled_trigger_makes_every_value_computed(pg: tuple[Warehouse, sa.Engine]) -> None:
    wh, _ = pg
    totals = Totals(wh)
    totals.remember()
    with wh.begin() as conn:
        conn.exec_driver_sql(f"ALTER TABLE {TABLE} DISABLE TRIGGER {facts.TRIGGER}")
        conn.exec_driver_sql(f"INSERT INTO {TABLE} VALUES (5)")
    assert [totals.remember().reused for _ in range(2)] == [False, False]
    assert totals.scans == 3


def test_sqlite_computes_every_time(tmp_path: Path) -> None:
    wh = Warehouse(f"sqlite:///{tmp_path}/w.db")
    with wh.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE {TABLE} (n integer)")
        conn.exec_driver_sql(f"INSERT INTO {TABLE} VALUES (1), (2), (3)")
    totals = Totals(wh)
    assert [(f.value, f.reused) for f in (totals.remember(), totals.remember())] == [
        ([6, 3], False), ([6, 3], False)]
    assert totals.scans == 2
    with wh.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(
            meta.table_facts)).scalar_one() == 0
    wh.dispose()


# The writes a property draws: any of them, in any order, between remembered values.
WRITES = st.sampled_from([
    "INSERT INTO {t} VALUES (7)",
    "UPDATE {t} SET n = n * 2 WHERE mod(n, 2) = 1",
    "DELETE FROM {t} WHERE n > 4",
    "TRUNCATE {t}",
    "UPDATE {t} SET n = n WHERE false",
    "rollback: INSERT INTO {t} VALUES (100)",
    "remake",
    "disable",
    "enable",
])


@pytest.mark.postgres
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.one_of(st.just("remember"), WRITES), min_size=1, max_size=12))
def test_a_remembered_value_is_always_the_value_now(
        pg: tuple[Warehouse, sa.Engine], steps: list[str]) -> None:
    wh, other = pg
    with wh.begin() as conn:  # each example from the same start
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {TABLE}")
        conn.exec_driver_sql(f"CREATE TABLE {TABLE} (n integer)")
        conn.exec_driver_sql(f"INSERT INTO {TABLE} VALUES (1), (2), (3)")
        conn.execute(meta.table_facts.delete())
    table = f'"{schema_of(wh)}".{TABLE}'
    totals = Totals(wh)
    written = True  # since the last value remembered
    disabled = False  # the trigger, by hand
    for step in [*steps, "remember"]:
        if step == "remember":
            fact = totals.remember()
            assert fact.value == totals.now()
            if not written and not disabled:
                assert fact.reused
            written = False
            continue
        written = True
        with other.connect() as conn:
            if step == "remake":
                conn.exec_driver_sql(f"DROP TABLE {table}")
                conn.exec_driver_sql(f"CREATE TABLE {table} (n integer)")
                conn.exec_driver_sql(f"INSERT INTO {table} VALUES (3), (4)")
                disabled = False
            elif step in ("disable", "enable"):
                exists = conn.execute(sa.text(
                    "SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass(:t) AND tgname = :n"),
                    {"t": table, "n": facts.TRIGGER}).first()
                if exists:
                    conn.exec_driver_sql(f"ALTER TABLE {table} {step.upper()} TRIGGER "
                                         f"{facts.TRIGGER}")
                    disabled = step == "disable"
            elif step.startswith("rollback: "):
                conn.exec_driver_sql(step.removeprefix("rollback: ").format(t=table))
                conn.rollback()
                continue
            else:
                conn.exec_driver_sql(step.format(t=table))
            conn.commit()
