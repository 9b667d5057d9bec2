"""On SQLite, a derive or a quality check that reads its whole table joins narrow copies of
the live partner rows instead of the partner tables. Whatever the partners hold (rows
deleted, revived, missing, a date key matched against a computed date), the outputs and
every stamp must be those the partner tables themselves give, and no copy may outlive
the read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import warehouse_on
from hypothesis import HealthCheck, example, settings

from loader.processors._select import RowSet

from .test_swap import given_histories, history, rows, run


@contextlib.contextmanager
def copies(monkeypatch: pytest.MonkeyPatch, enabled: bool) -> Iterator[list[list[str]]]:
    """Partner copies made (or none): for each read, the copies' columns; each read also
    checks that its copies are gone once it ends."""
    made: list[list[str]] = []
    original = RowSet.partner_copies

    @contextlib.contextmanager
    def spy(self: RowSet) -> Iterator[None]:
        if not enabled:
            yield
            return
        with original(self):
            names = [table.name for table in self.copies.values()]
            made.append(sorted(c.name for table in self.copies.values() for c in table.c))
            yield
        assert self.copies == {}
        left = self.conn.exec_driver_sql(
            "SELECT name FROM sqlite_temp_master WHERE type = 'table'").scalars().all()
        assert not set(names) & set(left)

    with monkeypatch.context() as patch:
        patch.setattr(RowSet, "partner_copies", spy)
        yield made


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@example(first=({("x", "a"): ("2026-01-01T01:30:00Z", 2, "1.25"),
                 ("y", "b"): ("2026-01-02T23:30:00Z", 3, "3.00")},
                {("x", "2026-01-01"): "1.10", ("y", "2026-01-02"): "0.50"}),
         edits=[(None, {("x", "2026-01-01"): "1.33"}),  # y's rate deleted
                (None, {("x", "2026-01-01"): "1.33", ("y", "2026-01-02"): "0.50"})],  # back
         modes=["full", "full", "full"])
@given_histories
def test_copies_of_the_partners_give_what_the_partners_give(
        tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch,
        first: tuple[dict[Any, Any], dict[Any, Any]],
        edits: list[tuple[dict[Any, Any] | None, dict[Any, Any] | None]],
        modes: list[str]) -> None:
    """Each edit replaces the events, the rates, or both (None keeps them); a rate missing
    from a file is deleted, and one that returns is revived."""
    tmp = tmp_path_factory.mktemp("copies")
    data = tmp / "data"
    data.mkdir()
    with warehouse_on("sqlite", tmp / "plain.db") as plain, \
            warehouse_on("sqlite", tmp / "copied.db") as copied:
        for n, mode in history(data, first, edits, modes):
            with copies(monkeypatch, enabled=False):
                expected = run(plain, data, mode)
            with copies(monkeypatch, enabled=True) as made:
                got = run(copied, data, mode)
            assert got == expected, n
            assert rows(copied) == rows(plain), n
            # A full run reads the whole table through a copy of the rates: their key
            # and the rate, nothing else. A refresh reads the partners themselves.
            assert made == ([["day", "part", "rate"]] if mode == "full" else []), n
