"""Quality rules: findings opened, kept and resolved incrementally in ``exceptions``.

A rule looks at one row (with its lookups) and returns a detail text when
the row is a finding: in Python, or, given as SQL, as one statement per rule
over all the rows it checks. A refresh re-checks only the rows whose inputs or
lookup partners changed after the watermark, and the rows deleted since;
a finding is resolved, never deleted, when its cause goes away, and a new
finding is opened if the cause returns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loader import bulk, meta
from loader.coltypes import iso_date, sql_type
from loader.errors import ConfigError
from loader.processors._select import Lookup, RowSet
from loader.processors.base import Context, Result
from loader.state import consume_from, consumed
from loader.tracking import DELETED_AT, TrackedTable, written_after

Check = Callable[[Mapping[str, Any]], str | None]
Values = Mapping[str, sa.ColumnElement[Any]]
SqlCheck = Callable[[Values], tuple[sa.ColumnElement[bool], sa.ColumnElement[str]]]
# Key column types whose text in SQL is the text default_row_key gives in Python.
SQL_KEY_TYPES = ("text", "integer", "date")


@dataclass(frozen=True)
class Rule:
    """A named check of one row; returns the finding's detail, or None when fine.

    ``check`` sees the row as a mapping, as a derive's ``compute`` does.
    Instead, ``sql`` may map the same names, as SQL expressions, to a pair:
    the condition under which the row is a finding, and its detail text.
    """

    name: str
    check: Check | None
    inputs: tuple[str, ...]
    lookups: tuple[Lookup, ...] = ()
    sql: SqlCheck | None = None

    def __post_init__(self) -> None:
        if (self.check is None) == (self.sql is None):
            raise ConfigError(f"rule {self.name!r}: give one of check= and sql=")


def default_row_key(key: Sequence[Any]) -> str:
    """``value1:value2`` of the key columns."""
    return ":".join("" if v is None else str(v) for v in key)


@dataclass
class Quality:
    """Run ``rules`` over the live rows of ``table``."""

    name: str
    table: str
    rules: tuple[Rule, ...]
    version: str = "1"
    page: int = 20_000

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c for rule in self.rules for c in rule.inputs))

    @property
    def lookups(self) -> tuple[Lookup, ...]:
        return tuple({lk.name: lk for rule in self.rules for lk in rule.lookups}.values())

    @property
    def reads(self) -> tuple[str, ...]:
        local = tuple(f"{self.table}.{c}" for c in self.inputs)
        return local + tuple(r for lookup in self.lookups for r in lookup.reads)

    @property
    def provides(self) -> tuple[str, ...]:
        return tuple(f"exceptions.{rule.name}" for rule in self.rules)

    def run(self, ctx: Context) -> Result:
        result = Result()
        with ctx.warehouse.begin() as conn:
            rows = RowSet.bind(conn, self.table, self.inputs, self.lookups)
            inputs = [self.table, *(lookup.table for lookup in self.lookups)]
            since, result.watermark_before = consume_from(conn, self.name, inputs,
                                                          self.version, ctx.full)
            if since is None or written_after(conn, inputs, since):
                self._check(conn, ctx, rows, since, result)
            result.watermark_after = consumed(conn, self.name, inputs, ctx.run_ts, self.version)
        return result

    def _check(self, conn: Connection, ctx: Context, rows: RowSet, since: datetime | None,
               result: Result) -> None:
        key_names = rows.table.key_names
        with ExitStack() as stack:
            findings = stack.enter_context(bulk.stage(conn, f"{self.name}_findings", [
                ("rule", sa.Text()), ("row_key", sa.Text()), ("detail", sa.Text())],
                key=("row_key", "rule")))
            checked = stack.enter_context(bulk.stage(conn, f"{self.name}_checked",
                                                     [("row_key", sa.Text())], key=("row_key",)))
            keys = None
            if since is not None:
                key_types = [(k.name, sql_type(k.type)) for k in rows.table.key]
                keys = stack.enter_context(bulk.stage(conn, f"{self.name}_keys", key_types,
                                                       key=key_names))
                conn.execute(sa.insert(keys).from_select(list(key_names),
                                                         rows.changed(since, self.inputs)))
                bulk.analyze(conn, keys)
                gone = conn.execute(rows.deleted_since(since)).all()
                bulk.load(conn, checked, ([default_row_key(k)] for k in gone))
            else:
                stack.enter_context(rows.partner_copies())
            in_sql = [rule for rule in self.rules if rule.sql is not None]
            in_python = [rule for rule in self.rules if rule.sql is None]
            if in_sql:
                self._check_sql(rows, keys, in_sql, findings, checked, result)
            if in_python or not in_sql:
                self._check_pages(ctx, rows, keys, in_python, findings,
                                  checked if since is not None and not in_sql else None, result)
            bulk.analyze(conn, findings)
            bulk.analyze(conn, checked)
            self._write(conn, ctx, findings, None if since is None else checked, result)

    def _check_sql(self, rows: RowSet, keys: sa.Table | None, rules: Sequence[Rule],
                   findings: sa.Table, checked: sa.Table, result: Result) -> None:
        """One statement per rule stages its findings among the rows to check."""
        values, source = rows.columns_and_source(keys)
        t = rows.table.table
        live = t.c[DELETED_AT].is_(None)
        row_key = sql_row_key(rows.table)
        for rule in rules:
            assert rule.sql is not None
            condition, detail = rule.sql(values)
            rows.conn.execute(sa.insert(findings).from_select(
                ["rule", "row_key", "detail"],
                sa.select(sa.literal(rule.name, sa.Text()), row_key, detail)
                .select_from(source).where(live, condition)))
        if keys is not None:
            checking = sa.select(row_key).select_from(source).where(live)
            result.rows_read = bulk.insert_from(rows.conn, checked, checking)
        else:
            result.rows_read = rows.conn.execute(
                sa.select(sa.func.count()).select_from(t).where(live)).scalar_one()

    def _check_pages(self, ctx: Context, rows: RowSet, keys: sa.Table | None,
                     rules: Sequence[Rule], findings: sa.Table, checked: sa.Table | None,
                     result: Result) -> None:
        """Run the Python rules over pages of rows, staging findings (and checked keys)."""
        key_names = rows.table.key_names
        result.rows_read = 0
        for page in rows.pages(keys, self.page):
            found, seen = [], []
            for row in page:
                row_key = default_row_key([row[k] for k in key_names])
                seen.append([row_key])
                for rule in rules:
                    assert rule.check is not None
                    detail = rule.check(row)
                    if detail is not None:
                        found.append([rule.name, row_key, detail])
            bulk.load(rows.conn, findings, found)
            if checked is not None:
                bulk.load(rows.conn, checked, seen)
            result.rows_read += len(page)
            ctx.progress(self.name, result.rows_read, None)

    def _write(self, conn: Connection, ctx: Context, findings: sa.Table,
               checked: sa.Table | None, result: Result) -> None:
        e = meta.exceptions
        ts = sa.literal(ctx.run_ts, sa.DateTime())
        rules = [rule.name for rule in self.rules]
        is_open = sa.and_(e.c.resolved_at.is_(None), e.c.table_name == self.table,
                          e.c.rule.in_(rules))
        same = sa.and_(findings.c.rule == e.c.rule, findings.c.row_key == e.c.row_key)
        resolve = sa.update(e).where(is_open, ~sa.exists().where(same)).values(resolved_at=ts)
        if checked is not None:
            resolve = resolve.where(sa.exists().where(checked.c.row_key == e.c.row_key))
        result.deleted = conn.execute(resolve).rowcount
        keep = sa.update(e).where(is_open, same).values(detail=findings.c.detail)
        if checked is None:
            keep = keep.where(e.c.detail.is_distinct_from(findings.c.detail))
        else:
            keep = keep.values(last_seen_at=ts)
        result.updated = conn.execute(keep).rowcount
        result.inserted = conn.execute(sa.insert(e).from_select(
            ["rule", "table_name", "row_key", "detail", "first_seen_at", "last_seen_at"],
            sa.select(findings.c.rule, sa.literal(self.table), findings.c.row_key,
                      findings.c.detail, ts, ts)
            .where(~sa.exists().where(is_open, same)),
        ), execution_options={"preserve_rowcount": True}).rowcount
        if result.inserted + result.deleted > 1000:
            bulk.analyze(conn, e)
        opened = conn.execute(
            sa.select(e.c.rule, sa.func.count()).where(e.c.resolved_at.is_(None),
                                                       e.c.table_name == self.table,
                                                       e.c.rule.in_(rules))
            .group_by(e.c.rule)).all()
        result.details["open"] = {rule: int(n) for rule, n in opened}
        result.details["opened"] = result.inserted
        result.details["resolved"] = result.deleted


def sql_row_key(table: TrackedTable) -> sa.ColumnElement[str]:
    """:func:`default_row_key` of ``table``'s rows, in SQL."""
    t = table.table
    joined: sa.ColumnElement[str] | None = None
    for column in table.key:
        kind = column.type.split(":")[0]
        if kind not in SQL_KEY_TYPES:
            raise ConfigError(
                f"rules in SQL need the key of {table.name} to be of type "
                f"{', '.join(SQL_KEY_TYPES)}; {column.name} is {column.type}")
        text: sa.ColumnElement[Any] = t.c[column.name]
        if kind == "date":
            text = iso_date(text)
        elif kind != "text":
            text = sa.cast(text, sa.Text())
        part = sa.func.coalesce(text, sa.literal("", sa.Text()), type_=sa.Text())
        joined = part if joined is None else joined + sa.literal(":", sa.Text()) + part
    assert joined is not None
    return joined
