"""Quality rules given in SQL find what the same rules in Python find.

The state machine of ``test_incremental_equals_full`` compares the two forms on the shop
warehouse through refreshes; here keys of every type SQL rules accept (text, integer,
date) must give the very row keys Python gives, and the rule's forms are checked.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import warehouse_on
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loader import CsvSnapshot, Field, Quality, Rule, Warehouse, run_sequence
from loader.errors import ConfigError
from loader.sources.csvfile import parse_date, parse_int

ITEMS = CsvSnapshot(
    name="items_file", table="items", pattern="items_{part}.csv", key=("part", "n", "day"),
    fields=(Field("n", "integer", parse_int), Field("day", "date", parse_date),
            Field("note")),
)


def _python(row: Mapping[str, Any]) -> str | None:
    return None if row["note"] is None else f"note {row['note']} on {row['day']}"


def _sql(c: Mapping[str, Any]) -> tuple[Any, Any]:
    from loader.coltypes import iso_date

    return c["note"].is_not(None), "note " + c["note"] + " on " + iso_date(c["day"])


def checks(in_sql: bool) -> Quality:
    rule = (Rule("noted", None, ("note", "day"), sql=_sql) if in_sql
            else Rule("noted", _python, ("note", "day")))
    return Quality(f"item_checks_{'sql' if in_sql else 'python'}", "items", (rule,))


def findings(wh: Warehouse) -> set[tuple[str, str | None]]:
    with wh.begin() as conn:
        return {(r[0], r[1]) for r in conn.execute(sa.text(
            "SELECT row_key, detail FROM exceptions WHERE resolved_at IS NULL"))}


rows = st.lists(st.tuples(st.integers(-10**6, 10**6), st.integers(0, 3000),
                          st.one_of(st.none(), st.sampled_from(["a", "b c", "é"]))),
                max_size=8, unique_by=lambda r: (r[0], r[1]))


def check_forms_agree(dialect: str, base: Path, versions: list[list[Any]]) -> None:
    """Load each version of the file, refreshing after the first, into one warehouse
    checked in Python and one checked in SQL: both hold the expected findings."""
    data = base / f"d{uuid.uuid4().hex[:8]}"
    data.mkdir()
    with warehouse_on(dialect, base / f"py{data.name}.db") as python_wh, \
            warehouse_on(dialect, base / f"sql{data.name}.db") as sql_wh:
        for mode, content in zip(("full", "refresh", "refresh"), versions, strict=False):
            days = {d: date(2020, 1, 1) + timedelta(days=d) for _, d, _ in content}
            lines = ["n,day,note", *(f"{n},{days[d]},{note or ''}" for n, d, note in content)]
            (data / "items_x.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
            params = {"data_dir": str(data)}
            for wh, in_sql in ((python_wh, False), (sql_wh, True)):
                outcome = run_sequence(wh, [ITEMS, checks(in_sql)],  # type: ignore[list-item]
                                       mode=mode, params=params)
                assert outcome.status == "succeeded", outcome.error
            expected = {(f"x:{n}:{days[d]}", f"note {note} on {days[d]}")
                        for n, d, note in content if note is not None}
            assert findings(python_wh) == expected
            assert findings(sql_wh) == expected


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(versions=st.lists(rows, min_size=1, max_size=3))
def test_sql_rules_find_what_python_rules_find_sqlite(tmp_path: Path,
                                                      versions: list[list[Any]]) -> None:
    check_forms_agree("sqlite", tmp_path, versions)


@pytest.mark.postgres
@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(versions=st.lists(rows, min_size=1, max_size=3))
def test_sql_rules_find_what_python_rules_find_postgresql(tmp_path: Path,
                                                          versions: list[list[Any]]) -> None:
    check_forms_agree("postgresql", tmp_path, versions)


def test_a_rule_is_python_or_sql() -> None:
    with pytest.raises(ConfigError, match="one of check= and sql="):
        Rule("neither", None, ("note",))
    with pytest.raises(ConfigError, match="one of check= and sql="):
        Rule("both", _python, ("note",), sql=_sql)


def test_sql_rules_refuse_keys_whose_text_differs(tmp_path: Path) -> None:
    """A timestamp key has no SQL text equal to Python's str(): the run fails, naming it."""
    from loader.sources.csvfile import parse_timestamp

    stamped = CsvSnapshot(name="stamped_file", table="stamped", pattern="stamped_{part}.csv",
                          key=("part", "at"), fields=(Field("at", "timestamp", parse_timestamp),
                                                      Field("note")))
    (tmp_path / "stamped_x.csv").write_text("at,note\n2020-01-01T00:00:00,a\n")
    wh = Warehouse(f"sqlite:///{tmp_path}/wh.db")
    try:
        rule = Rule("noted", None, ("note",), sql=lambda c: (c["note"].is_not(None), c["note"]))
        outcome = run_sequence(wh, [stamped, Quality("stamped_checks", "stamped", (rule,))],  # type: ignore[list-item]
                               mode="full", params={"data_dir": str(tmp_path)})
        assert outcome.status == "failed"
        assert "stamped" in (outcome.error or "") and "at is timestamp" in (outcome.error or "")
    finally:
        wh.dispose()
