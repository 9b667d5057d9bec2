"""Set-based writes into tracked tables from a staged temporary table.

One statement each, shared by both dialects: update the rows whose values
differ (stamping exactly the columns that changed), insert the new keys,
soft-delete keys that vanished. ``IS DISTINCT FROM`` (``IS NOT`` on SQLite)
compares values NULL-safely.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loader import bulk
from loader.bulk import postgresql as pg_bulk
from loader.tracking import (
    CHANGED_AT,
    DELETED_AT,
    LIVE_SINCE,
    ROW_HASH,
    TrackedTable,
    null_safe_key,
    stamp,
    stamp_literal,
)

ANALYZE_AFTER = 20_000
# ... and at least this share of the rows the table had when last analysed.
ANALYZE_SHARE = 0.1


@dataclass
class MergeCounts:
    """What a merge did: rows inserted, updated, revived, deleted, and per column."""

    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    changes: dict[str, int] = field(default_factory=dict)

    def add(self, other: MergeCounts) -> None:
        self.inserted += other.inserted
        self.updated += other.updated
        self.deleted += other.deleted
        for column, count in other.changes.items():
            self.changes[column] = self.changes.get(column, 0) + count


def key_match(table: TrackedTable, a: sa.Table | sa.Subquery, b: sa.Table | sa.Subquery,
              dialect: str) -> sa.ColumnElement[bool]:
    """``a``'s key equals ``b``'s, NULL equal to NULL for nullable keys.

    For nullable keys each dialect gets the form it can serve fast: PostgreSQL
    compares both sides coalesced to a sentinel (hash-joinable, where ``IS NOT
    DISTINCT FROM`` is not); SQLite uses ``IS``, which its indexes serve.
    """
    terms: list[sa.ColumnElement[bool]] = []
    for column in table.key:
        left: sa.ColumnElement[Any] = a.c[column.name]
        right: sa.ColumnElement[Any] = b.c[column.name]
        if not table.nullable_key:
            terms.append(left == right)
        else:
            terms.append(null_safe_equal(left, right, column.type, dialect))
    return sa.and_(*terms)


def null_safe_equal(left: sa.ColumnElement[Any], right: sa.ColumnElement[Any], type_name: str,
                    dialect: str) -> sa.ColumnElement[bool]:
    """``left`` equals ``right`` with NULL equal to NULL, in the dialect's fast form."""
    if dialect == "sqlite":
        return left.is_not_distinct_from(right)
    return null_safe_key(left, type_name) == null_safe_key(right, type_name)


def describe_key(conn: Connection, table: TrackedTable, stage: sa.Table) -> None:
    """Before ``stage`` is analysed: have PostgreSQL count the values of the null-safe key
    that ``key_match`` compares with ``table``'s, when that key is nullable."""
    if table.nullable_key and conn.dialect.name == "postgresql":
        pg_bulk.expression_statistics(
            conn, stage, [null_safe_key(stage.c[c.name], c.type) for c in table.key])


def upsert(conn: Connection, table: TrackedTable, stage: sa.Table, columns: Sequence[str],
           run_ts: datetime, *, insert: bool = True, with_hash: bool = False,
           empty: bool = False) -> MergeCounts:
    """Merge the staged rows into ``table``.

    ``columns`` are the data columns present in ``stage`` (besides the key).
    A row whose values are all equal is not touched and keeps its stamps; a
    soft-deleted row that comes back is revived with every column stamped.
    ``empty`` tells that ``table`` has no row, live or deleted: every staged row
    is inserted, with no comparison.
    """
    t = table.table
    s = stage
    at = stamp_literal(run_ts)
    if not empty:
        describe_key(conn, table, s)
        bulk.analyze(conn, s)
    dead = t.c[DELETED_AT].is_not(None)
    differs = {c: t.c[c].is_distinct_from(s.c[c]) for c in columns}
    any_change = sa.or_(dead, *differs.values())
    condition = any_change
    if with_hash:
        condition = sa.or_(any_change, t.c[ROW_HASH].is_distinct_from(s.c[ROW_HASH]))
    counts = MergeCounts()
    joined = None  # staged rows whose key is in the table, when counted
    to_update = None  # rows the update would write, when counted
    if columns and not empty:
        totals = conn.execute(
            sa.select(
                sa.func.count(),
                *(sa.func.coalesce(sa.func.sum(sa.case((when, 1), else_=0)), 0)
                  for when in (condition, dead, *(~dead & d for d in differs.values()))),
            ).select_from(t.join(s, key_match(table, t, s, conn.dialect.name)))
        ).one()
        joined, to_update, revived = int(totals[0]), int(totals[1]), int(totals[2])
        counts.changes = {c: int(n) + revived for c, n in zip(columns, totals[3:], strict=True)}
    values: dict[str, Any] = {}
    for c in columns:
        values[c] = s.c[c]
        values[stamp(c)] = sa.case((sa.or_(dead, differs[c]), at), else_=t.c[stamp(c)])
    others = [c for c in table.column_names if c not in columns]
    for c in others:
        # A revived row is new again: every one of its cells is stamped.
        values[stamp(c)] = sa.case((dead, at), else_=t.c[stamp(c)])
    values[CHANGED_AT] = sa.case((any_change, at), else_=t.c[CHANGED_AT])
    values[LIVE_SINCE] = sa.case((dead, at), else_=t.c[LIVE_SINCE])
    values[DELETED_AT] = None
    if with_hash:
        values[ROW_HASH] = s.c[ROW_HASH]
    # A count that found no row to write spares the update its join: a full run over
    # a correct warehouse joins each large stage once instead of twice.
    if not empty and to_update != 0:
        result = conn.execute(
            sa.update(t).where(key_match(table, t, s, conn.dialect.name), condition)
            .values(values)
        )
        counts.updated = result.rowcount
    if insert and joined is not None and joined == conn.execute(
            sa.select(sa.func.count()).select_from(s)).scalar_one():
        insert = False  # every staged key is in the table already: nothing is new
    if insert:
        names = [*table.key_names, *columns]
        selected: list[Any] = [s.c[n] for n in names]
        stamped = [*columns, *(c for c in table.column_names if c not in columns)]
        names += [stamp(c) for c in stamped] + [CHANGED_AT, LIVE_SINCE]
        selected += [stamp_literal(run_ts) for _ in range(len(stamped) + 2)]
        if with_hash:
            names.append(ROW_HASH)
            selected.append(s.c[ROW_HASH])
        query = sa.select(*selected)
        if not empty:
            query = query.where(~sa.exists().where(key_match(table, t, s, conn.dialect.name)))
        result = conn.execute(
            sa.insert(t).from_select(names, query),
            execution_options={"preserve_rowcount": True},
        )
        counts.inserted = result.rowcount
        for c in columns:
            counts.changes[c] = counts.changes.get(c, 0) + counts.inserted
    counts.changes = {c: n for c, n in counts.changes.items() if n}
    if _statistics_stale(conn, t, counts.inserted + counts.updated):
        bulk.analyze(conn, t)
    return counts


def _statistics_stale(conn: Connection, table: sa.Table, written: int) -> bool:
    """Whether ``written`` rows are enough to analyse ``table`` again: ``ANALYZE_AFTER``
    rows and ``ANALYZE_SHARE`` of the rows it had when last analysed, the rule
    autovacuum follows. Rows updated in place move few statistics, and at 1,000,000
    sales a 10% refresh analysed ``sales`` four times, 0.45-0.77 s each, after the
    merge of each region file's 25,000 changed rows.
    """
    if written < ANALYZE_AFTER:
        return False
    if conn.dialect.name != "postgresql":
        return True
    return written >= ANALYZE_SHARE * pg_bulk.estimated_rows(conn, table.name)


def delete_hashes(conn: Connection, table: TrackedTable, hashes: sa.Table,
                  where: sa.ColumnElement[bool], run_ts: datetime) -> int:
    """Soft-delete the live rows ``where`` selects whose row hash is in ``hashes``."""
    t = table.table
    return _soft_delete(conn, table, run_ts, where,
                        t.c[ROW_HASH].in_(sa.select(hashes.c[ROW_HASH])))


def delete_missing(conn: Connection, table: TrackedTable, stage: sa.Table, run_ts: datetime,
                   *, merged: int | None = None) -> int:
    """Soft-delete the live rows whose key is not in ``stage``.

    ``merged``, the number of rows of a ``stage`` that holds each key once and has just
    been upserted into ``table``, tells that each staged row is a live row of it: then
    no row is missing when the table has no more live rows than that, which a count
    tells without the anti-join (at 1,000,000 sales, 0.40 s for the 220,000 daily
    groups). A stage that may repeat a key (rows read from a source without a unique
    key) must not claim it.
    """
    t = table.table
    if merged is not None and conn.execute(sa.select(sa.func.count()).select_from(t).where(
            t.c[DELETED_AT].is_(None))).scalar_one() <= merged:
        return 0
    return _soft_delete(conn, table, run_ts,
                        ~sa.exists().where(key_match(table, t, stage, conn.dialect.name)))


def delete_matching(conn: Connection, table: TrackedTable, stage: sa.Table,
                    run_ts: datetime) -> int:
    """Soft-delete the live rows whose key is in ``stage`` (NULL-safely matched)."""
    t = table.table
    return _soft_delete(conn, table, run_ts,
                        sa.exists().where(key_match(table, t, stage, conn.dialect.name)))


def _soft_delete(conn: Connection, table: TrackedTable, run_ts: datetime,
                 *where: sa.ColumnElement[bool]) -> int:
    """Stamp the live rows ``where`` selects deleted at ``run_ts``; returns how many."""
    t = table.table
    return int(conn.execute(
        sa.update(t).where(t.c[DELETED_AT].is_(None), *where)
        .values(dict.fromkeys((DELETED_AT, CHANGED_AT), stamp_literal(run_ts)))
    ).rowcount)
