"""A lookup that joins on an output of its own derive: the date of a timestamp.

Events carry a timestamp; rates are kept by day. The derive computes ``day`` from
``at`` in SQL and finds the day's rate through it, in its SQL form and in its Python
form, on both dialects. After each change of the sources, a refresh must give what a
full run gives, and re-derive only the events whose time or whose day's rate changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import warehouse_on

from loader import CsvSnapshot, Derive, Field, Lookup, Warehouse, cols, run_sequence
from loader.errors import ConfigError
from loader.sources.csvfile import parse_date, parse_decimal, parse_timestamp

EVENTS = CsvSnapshot(name="events_file", table="events", pattern="events_{part}.csv",
                     key=("part", "id"), fields=(Field("id"), Field("at", "timestamp",
                                                                      parse_timestamp)))
RATES = CsvSnapshot(name="rates_file", table="rates", pattern="rates_{part}.csv",
                    key=("part", "day"), fields=(Field("day", "date", parse_date),
                                                 Field("rate", "decimal:2", parse_decimal(2))))
LOOKUP = Lookup.of("r", "rates", {"part": "part", "day": "day"}, ["rate"])
DAY = {"day": lambda c: sa.func.date(c["at"])}


def _python(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"rate": row["r.rate"]}


def derive(form: str) -> Derive:
    outputs = cols("day:date, rate:decimal:2")
    if form == "sql":
        return Derive("event_rates", "events", ("at",), outputs, lookups=(LOOKUP,),
                      sql={**DAY, "rate": lambda c: c["r.rate"]})
    return Derive("event_rates", "events", ("at",), outputs, compute=_python,
                  lookups=(LOOKUP,), sql=DAY)


def events(wh: Warehouse) -> dict[str, tuple[Any, Any]]:
    with wh.begin() as conn:
        # SQLite gives REAL back as float: its shortest text is the decimal stored.
        return {r.id: (str(r.day), None if r.rate is None
                       else Decimal(str(r.rate)).quantize(Decimal("0.01")))
                for r in conn.execute(sa.text("SELECT id, day, rate FROM events"))}


@pytest.mark.parametrize("form", ["sql", "python"])
@pytest.mark.parametrize("dialect", ["sqlite", pytest.param("postgresql",
                                                            marks=pytest.mark.postgres)])
def test_a_lookup_joins_on_the_fresh_value_of_an_output(dialect: str, form: str,
                                                        tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()

    def write(events: list[str], rates: list[str]) -> None:
        (data / "events_x.csv").write_text("id,at\n" + "".join(f"{e}\n" for e in events))
        (data / "rates_x.csv").write_text("day,rate\n" + "".join(f"{r}\n" for r in rates))

    def run(wh: Warehouse, mode: str) -> Any:
        outcome = run_sequence(wh, [EVENTS, RATES, derive(form)],  # type: ignore[list-item]
                               mode=mode, params={"data_dir": str(data)})
        assert outcome.status == "succeeded", outcome.error
        return outcome.results["event_rates"]

    rates = ["2026-01-01,1.10", "2026-01-02,1.20"]
    evs = ["a,2026-01-01T23:30:00Z", "b,2026-01-02T00:30:00+02:00", "c,2026-01-02T10:00:00Z",
           "d,2026-01-03T10:00:00Z"]
    with warehouse_on(dialect, tmp_path / "inc.db") as inc:
        write(evs, rates)
        run(inc, "full")
        assert events(inc) == {"a": ("2026-01-01", Decimal("1.10")),
                               "b": ("2026-01-01", Decimal("1.10")),  # 22:30 UTC
                               "c": ("2026-01-02", Decimal("1.20")),
                               "d": ("2026-01-03", None)}
        steps = [
            # a moves to the next day: only a is re-derived, and takes that day's rate
            (["a,2026-01-02T01:00:00Z", *evs[1:]], rates, {"a"}),
            # the rate of the 2nd changes: the events of that day, no others
            (["a,2026-01-02T01:00:00Z", *evs[1:]], ["2026-01-01,1.10", "2026-01-02,1.25"],
             {"a", "c"}),
            # the 3rd gets a rate: d
            (["a,2026-01-02T01:00:00Z", *evs[1:]],
             ["2026-01-01,1.10", "2026-01-02,1.25", "2026-01-03,0.90"], {"d"}),
        ]
        for n, (now_events, now_rates, rederived) in enumerate(steps):
            write(now_events, now_rates)
            result = run(inc, "refresh")
            assert result.rows_read == len(rederived), n
            with warehouse_on(dialect, tmp_path / f"full{n}.db") as full:
                run(full, "full")
                assert events(inc) == events(full), n
        assert events(inc)["a"] == ("2026-01-02", Decimal("1.25"))
        assert events(inc)["d"] == ("2026-01-03", Decimal("0.90"))


def test_the_output_a_lookup_joins_on_must_be_sql() -> None:
    with pytest.raises(ConfigError, match="joins on the output"):
        Derive("event_rates", "events", ("at",), cols("day:date, rate:decimal:2"),
               compute=_python, lookups=(LOOKUP,))
    with pytest.raises(ConfigError, match="only the outputs a lookup joins on"):
        Derive("event_rates", "events", ("at",), cols("day:date, rate:decimal:2"),
               compute=_python, lookups=(LOOKUP,),
               sql={**DAY, "rate": lambda c: c["r.rate"]})


def test_the_output_a_lookup_joins_on_may_use_only_inputs(tmp_path: Path) -> None:
    """Computed from another output's stored value, the join could miss a change: the
    run fails naming the output and the column."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "events_x.csv").write_text("id,at\na,2026-01-01T10:00:00Z\n")
    (data / "rates_x.csv").write_text("day,rate\n2026-01-01,1.10\n")
    wrong = Derive("event_rates", "events", ("at",), cols("rate:decimal:2, day:date"),
                   lookups=(LOOKUP,), sql={"rate": lambda c: c["r.rate"],
                                           "day": lambda c: sa.func.date(c["rate"])})
    wh = Warehouse(f"sqlite:///{tmp_path}/wh.db")
    try:
        outcome = run_sequence(wh, [EVENTS, RATES, wrong],  # type: ignore[list-item]
                               mode="full", params={"data_dir": str(data)})
        assert outcome.status == "failed"
        assert "'day'" in (outcome.error or "") and "not 'rate'" in (outcome.error or "")
    finally:
        wh.dispose()
