"""Which rows of a tracked table need another look, and reading them in pages.

Shared by derive processors and quality rules: a row needs another look when
one of its input columns was stamped after the watermark, or when a lookup
partner it joins to was inserted, changed in a used column, or deleted after
the watermark.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loader.coltypes import sql_type
from loader.errors import ConfigError
from loader.tracking import (
    CHANGED_AT,
    DELETED_AT,
    LIVE_SINCE,
    TrackedTable,
    require_table,
    stamp,
    stamp_literal,
)

PAGE = 50_000
# A computed join column's stored value is read under its name with this suffix.
STORED = ":stored"
Expression = Callable[[Mapping[str, sa.ColumnElement[Any]]], sa.ColumnElement[Any]]
_copies = itertools.count(1)


@dataclass(frozen=True)
class Lookup:
    """A join from each row to one row of another tracked table, by that table's key.

    ``on`` maps local columns to the partner's key columns; ``columns`` are
    the partner's columns the computation uses, visible to it as
    ``"<name>.<column>"``; ``"<name>"`` itself is True when a live partner exists.
    """

    name: str
    table: str
    on: tuple[tuple[str, str], ...]
    columns: tuple[str, ...] = ()

    @classmethod
    def of(cls, name: str, table: str, on: dict[str, str],
           columns: Sequence[str] = ()) -> Lookup:
        return cls(name, table, tuple(on.items()), tuple(columns))

    @property
    def reads(self) -> tuple[str, ...]:
        return tuple(f"{self.table}.{c}" for c in (*(r for _, r in self.on), *self.columns))


@dataclass
class RowSet:
    """A tracked table, the columns to read from it, and its lookups, bound to a connection.

    ``computed`` gives some columns as SQL expressions of the row's other columns
    (in order, each seeing those before it): a lookup that joins on such a column
    joins on its value computed afresh, not on the stored one.
    """

    conn: Connection
    table: TrackedTable
    columns: tuple[str, ...]
    lookups: tuple[tuple[Lookup, TrackedTable], ...]
    computed: Mapping[str, Expression] = field(default_factory=dict)
    # Narrow copies of the live partner rows, by lookup name, while partner_copies() runs.
    copies: dict[str, sa.Table] = field(default_factory=dict)

    @classmethod
    def bind(cls, conn: Connection, table: str, columns: Sequence[str],
             lookups: Sequence[Lookup],
             computed: Mapping[str, Expression] | None = None) -> RowSet:
        main = require_table(conn, table)
        for column in columns:
            main.col(column)
        bound = []
        for lookup in lookups:
            partner = require_table(conn, lookup.table)
            if tuple(sorted(r for _, r in lookup.on)) != tuple(sorted(partner.key_names)):
                raise ConfigError(
                    f"lookup {lookup.name!r} joins {lookup.table} on "
                    f"{', '.join(r for _, r in lookup.on)}, which is not its key "
                    f"({', '.join(partner.key_names)})"
                )
            bound.append((lookup, partner))
        return cls(conn, main, tuple(columns), tuple(bound), dict(computed or {}))

    def _join(self, local: Mapping[str, sa.ColumnElement[Any]], lookup: Lookup,
              alias: sa.FromClause) -> sa.ColumnElement[bool]:
        """``lookup``'s join condition, its local side from ``local`` (else the table)."""
        t = self.table.table
        return sa.and_(*((local[name] if name in local else t.c[name]) == alias.c[remote]
                         for name, remote in lookup.on))

    def changed(self, since: datetime, inputs: Sequence[str]) -> sa.Select[Any]:
        """Keys of live rows whose inputs, or lookup partners, changed after ``since``.

        A partner is matched through the stored values of computed columns: a row
        whose computed column would now differ has changed inputs of its own.
        """
        t = self.table.table
        key = [t.c[k] for k in self.table.key_names]
        after = stamp_literal(since)
        own = sa.select(*key).where(
            t.c[DELETED_AT].is_(None), t.c[CHANGED_AT] > after,
            sa.or_(t.c[LIVE_SINCE] > after,
                   *(t.c[stamp(c)] > after for c in inputs if c not in self.table.key_names)),
        )
        selects = [own]
        stored = dict(t.c.items())
        for lookup, partner in self.lookups:
            p = partner.table.alias(f"p_{lookup.name}")
            selects.append(
                sa.select(*key).select_from(t.join(p, self._join(stored, lookup, p))).where(
                    t.c[DELETED_AT].is_(None), p.c[CHANGED_AT] > after,
                    sa.or_(p.c[DELETED_AT] > after, p.c[LIVE_SINCE] > after,
                           *(p.c[stamp(c)] > after for c in lookup.columns)),
                )
            )
        if len(selects) == 1:
            return own
        return sa.union(*selects).subquery().select()

    @contextmanager
    def partner_copies(self) -> Iterator[None]:
        """On SQLite, let reads of the whole table join narrow copies of the partners.

        A row of the table meets its partners in no useful order, and SQLite finds
        each one through the partner's key index and then its wide row: at
        1,000,000 sales, looking up 100,000 customers and 10,000 products took 4.1 s.
        A temporary copy of the live partner rows, the key and the columns the
        lookup uses, clustered on the key (``WITHOUT ROWID``), took 1.0 s, and
        copying them 0.05 s. Columns keep their declared types, so that values
        compare as they do in the partner table. A partner whose key may be NULL
        is joined as it is. The copies are dropped when the block ends (on an error,
        with the transaction).
        """
        if self.conn.dialect.name != "sqlite":
            yield
            return
        made: dict[str, sa.Table] = {}
        try:
            for lookup, partner in self.lookups:
                if partner.nullable_key or lookup.name in self.copies:
                    continue
                used = [*partner.key_names,
                        *(c for c in lookup.columns if c not in partner.key_names)]
                copy = sa.Table(
                    f"_lookup_{next(_copies)}", sa.MetaData(),
                    *(sa.Column(c, sql_type(partner.col(c).type),
                                primary_key=c in partner.key_names) for c in used),
                    prefixes=["TEMPORARY"], sqlite_with_rowid=False)
                copy.create(self.conn)
                made[lookup.name] = copy
                p = partner.table
                self.conn.execute(sa.insert(copy).from_select(
                    used, sa.select(*(p.c[c] for c in used)).where(p.c[DELETED_AT].is_(None))))
                self.copies[lookup.name] = copy
            yield
        finally:
            for name in made:
                self.copies.pop(name, None)
        for copy in made.values():
            copy.drop(self.conn)

    def columns_and_source(self, keys: sa.Table | None
                           ) -> tuple[dict[str, sa.ColumnElement[Any]], sa.FromClause]:
        """Every value a computation may use, by name, and the join that yields them.

        Names are the table's columns, ``"<lookup>.<column>"`` for lookup
        columns, and ``"<lookup>"`` (a live partner exists). A computed column is
        its fresh value, and its stored one is ``"<column>:stored"``.
        """
        t = self.table.table
        names = list(self.table.key_names) + [c for c in self.columns
                                              if c not in self.table.key_names]
        values: dict[str, sa.ColumnElement[Any]] = {n: t.c[n] for n in names}
        for name, expression in self.computed.items():
            values[name + STORED] = t.c[name]
            values[name] = expression(values)
        source = self.keyed(keys)
        for lookup, partner in self.lookups:
            copy = self.copies.get(lookup.name) if keys is None else None
            if copy is not None:  # its rows are the live ones
                p = copy.alias(f"p_{lookup.name}")
                source = source.outerjoin(p, self._join(values, lookup, p))
            else:
                p = partner.table.alias(f"p_{lookup.name}")
                source = source.outerjoin(
                    p, sa.and_(self._join(values, lookup, p), p.c[DELETED_AT].is_(None)))
            values[lookup.name] = p.c[partner.key_names[0]].is_not(None)
            for column in lookup.columns:
                values[f"{lookup.name}.{column}"] = p.c[column]
        return values, source

    def keyed(self, keys: sa.Table | None) -> sa.FromClause:
        """The table, joined to ``keys`` (a stage of keys) when given: its rows to read."""
        t = self.table.table
        if keys is None:
            return t
        return t.join(keys, sa.and_(*(t.c[k] == keys.c[k] for k in self.table.key_names)))

    def _row_query(self, keys: sa.Table | None) -> tuple[sa.Select[Any], list[str]]:
        values, source = self.columns_and_source(keys)
        t = self.table.table
        query = sa.select(*values.values()).select_from(source).where(t.c[DELETED_AT].is_(None))
        return query, list(values)

    def pages(self, keys: sa.Table | None, page: int = PAGE) -> Iterator[list[dict[str, Any]]]:
        """The live rows (all, or those whose key is in ``keys``), a page at a time.

        One streaming query (a server-side cursor on PostgreSQL): memory stays
        flat, and the caller may stage writes between pages.
        """
        query, names = self._row_query(keys)
        result = self.conn.execute(query, execution_options={"stream_results": True,
                                                             "yield_per": page})
        try:
            for part in result.partitions(page):
                yield [dict(zip(names, row, strict=True)) for row in part]
        finally:
            result.close()

    def deleted_since(self, since: datetime) -> sa.Select[Any]:
        """Keys of rows soft-deleted after ``since``.

        A deletion stamps the row's change time too, so the indexed ``_changed_at``
        narrows the search first.
        """
        t = self.table.table
        after = stamp_literal(since)
        return sa.select(*(t.c[k] for k in self.table.key_names)).where(
            t.c[CHANGED_AT] > after, t.c[DELETED_AT] > after)
