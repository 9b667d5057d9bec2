"""A merge told that its table is empty inserts exactly what a full merge would:
the same rows, every cell stamped, and the same counts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loader import Warehouse, bulk
from loader.merge import MergeCounts, upsert
from loader.tracking import Col, TrackedTable, ensure_table

TABLE = TrackedTable("groups", (Col("k"), Col("day", "date")),
                     (Col("n", "integer"), Col("label")), nullable_key=True)
RUN_TS = datetime(2026, 11, 30, 6, 0, 0)

staged = st.lists(
    st.tuples(st.none() | st.sampled_from(["a", "b", "c"]),
              st.none() | st.sampled_from(["2026-01-01", "2026-01-02"]),
              st.none() | st.integers(-3, 3), st.none() | st.text("xy", max_size=2)),
    unique_by=lambda row: row[:2], max_size=8)


def merged(wh: Warehouse, rows: list[tuple[Any, ...]],
           empty: bool) -> tuple[MergeCounts, list[tuple[Any, ...]]]:
    """Merge ``rows`` into a new table, then roll everything back."""
    with wh.engine.connect() as conn, conn.begin() as transaction:
        table = ensure_table(conn, TABLE, run_id=None, now=RUN_TS)
        columns = [(c.name, sa.Text() if c.type == "text" else sa.Date() if c.type == "date"
                    else sa.BigInteger()) for c in TABLE.all_columns]
        with bulk.stage(conn, "groups", columns, key=TABLE.key_names) as stage:
            bulk.load(conn, stage, [(k, None if d is None else datetime.fromisoformat(d).date(),
                                     n, label) for k, d, n, label in rows])
            counts = upsert(conn, table, stage, ["n", "label"], RUN_TS, empty=empty)
        found = conn.execute(sa.select(table.table).order_by(
            *table.table.c)).all()
        transaction.rollback()
    return counts, [tuple(row) for row in found]


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=staged)
def test_an_empty_table_gets_what_a_full_merge_gives(warehouse: Warehouse,
                                                      rows: list[tuple[Any, ...]]) -> None:
    full, full_rows = merged(warehouse, rows, empty=False)
    fast, fast_rows = merged(warehouse, rows, empty=True)
    assert fast == full
    assert fast_rows == full_rows
    assert len(fast_rows) == len(rows) == fast.inserted


def test_the_first_build_of_an_aggregate_counts_every_group(warehouse: Warehouse,
                                                           tmp_path: Any) -> None:
    """The aggregate's first build takes that path: every group inserted and counted."""
    from .shop import sample_shop, view

    shop = sample_shop(tmp_path / "data")
    outcome = shop.run(warehouse, "full")
    assert outcome.status == "succeeded", outcome.error
    result = outcome.results["by_seg"]
    groups = len(view(warehouse, "seg_totals"))
    assert result.inserted == groups == 3  # A, B, and the order of an unknown customer
    assert result.changes == {"seg_totals.n": groups, "seg_totals.revenue": groups}

