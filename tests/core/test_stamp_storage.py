"""How stamps are stored: integers of microseconds on SQLite, and the migration that
turns an older warehouse's text stamps into them (and back)."""

from __future__ import annotations

import importlib.util
import sqlite3
from datetime import datetime
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import command
from hypothesis import given
from hypothesis import strategies as st

from loader import Warehouse, migrate
from loader.coltypes import micros_stamp, stamp_micros

from .shop import dump, run_ts, sample_shop

STAMPS = ("_changed_at_qty", "_changed_at_price", "_changed_at_cust", "_changed_at",
          "_deleted_at", "_live_since")


MOMENTS = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31))


@given(MOMENTS, MOMENTS)
def test_a_stamp_survives_its_integer_form_which_orders_as_it(a: datetime,
                                                              b: datetime) -> None:
    assert micros_stamp(stamp_micros(a)) == a
    assert (stamp_micros(a) < stamp_micros(b)) == (a < b)
    assert (stamp_micros(a) == stamp_micros(b)) == (a == b)


def test_a_stamp_counts_microseconds_from_1970() -> None:
    assert stamp_micros(datetime(1970, 1, 1, 0, 0, 1, 5)) == 1_000_005
    assert stamp_micros(datetime(1969, 12, 31, 23, 59, 59)) == -1_000_000


def raw_stamps(engine: sa.Engine) -> list[tuple[object, ...]]:
    with engine.begin() as conn:
        return [tuple(r) for r in conn.execute(sa.text(
            f"SELECT shop, id, {', '.join(STAMPS)} FROM orders_tracked ORDER BY shop, id"))]


def test_sqlite_stamps_are_integers_and_the_migration_converts_text_ones(
        tmp_path: Path) -> None:
    """A run stores its timestamp as microseconds since 1970 in every stamp it writes.
    Downgrading to 0002 turns them into SQLAlchemy's text form of the same moment, and
    upgrading turns that text back into the same integers; the warehouse then goes on
    stamping a refresh's changes as before."""
    url = f"sqlite:///{tmp_path}/wh.db"
    shop = sample_shop(tmp_path / "data")
    wh = Warehouse(url)
    try:
        first = shop.run(wh, "full")
        assert first.status == "succeeded", first.error
        shop.orders["east"]["2"]["qty"] = "7"
        del shop.orders["west"]["2"]
        for part in ("east", "west"):
            shop.write_orders(part)
        second = shop.run(wh, "refresh")
        assert second.status == "succeeded", second.error
        with wh.begin() as conn:
            runs = dict(conn.execute(sa.text("SELECT run_id, run_ts FROM loader_runs")).all())
        before = dump(wh)
    finally:
        wh.dispose()
    texts = {str(ts) for ts in runs.values()}
    as_micros = {stamp_micros(datetime.fromisoformat(ts)) for ts in texts}
    stored = raw_stamps(sa.create_engine(url))
    assert {v for row in stored for v in row[2:] if v is not None} == as_micros
    # The changed cell and the deleted row carry the second run; the rest the first.
    by_key = {(r[0], r[1]): dict(zip(STAMPS, r[2:], strict=True)) for r in stored}
    second_at = stamp_micros(datetime.fromisoformat(str(runs[second.run_id])))
    assert by_key["east", "2"]["_changed_at_qty"] == by_key["east", "2"]["_changed_at"] \
        == second_at
    assert by_key["west", "2"]["_deleted_at"] == second_at
    assert by_key["east", "1"]["_changed_at"] < second_at

    engine = sa.create_engine(url)
    try:
        config = migrate.alembic_config()
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0002")
        downgraded = raw_stamps(engine)
        assert {v for row in downgraded for v in row[2:] if v is not None} == texts
        assert [r[:2] for r in downgraded] == [r[:2] for r in stored]
        migrate.upgrade(engine)
        assert raw_stamps(engine) == stored
    finally:
        engine.dispose()

    wh = Warehouse(url)
    try:
        assert dump(wh) == before
        shop.orders["east"]["1"]["price"] = "4.00"
        shop.write_orders("east")
        third = shop.run(wh, "refresh")
        assert third.status == "succeeded", third.error
        row = next(r for r in dump(wh)["orders_tracked"] if (r["shop"], r["id"]) == ("east", "1"))
        assert row["_changed_at_price"] == row["_changed_at"] == run_ts(wh, third.run_id)
        assert row["_changed_at_qty"] == run_ts(wh, first.run_id)
    finally:
        wh.dispose()


def _migration() -> ModuleType:
    path = Path(__file__).parents[2] / "migrations" / "versions" / "0003_sqlite_integer_stamps.py"
    spec = importlib.util.spec_from_file_location("migration_0003", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MIGRATION = _migration()


@given(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59)))
def test_the_migrations_sql_converts_as_the_stamp_type_does(moment: datetime) -> None:
    """Text as SQLAlchemy stores a DATETIME on SQLite becomes the Stamp type's integer,
    and back, before 1970 too."""
    text = moment.strftime("%Y-%m-%d %H:%M:%S.%f").rjust(26, "0")
    with sqlite3.connect(":memory:") as db:
        micros = db.execute("SELECT " + MIGRATION.TO_MICROS.format(c=":v"),
                            {"v": text}).fetchone()[0]
        back = db.execute("SELECT " + MIGRATION.TO_TEXT.format(c=":v"),
                          {"v": micros}).fetchone()[0]
    db.close()
    assert micros == stamp_micros(moment)
    assert back == text
