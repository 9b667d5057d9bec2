"""Tracked tables: rows that remember when each of their columns last changed.

A tracked table named ``NAME`` is stored as the physical table
``NAME_tracked`` and read through the view ``NAME``, which shows the live rows
and the user's columns only. The physical table holds, besides the key and
the data columns:

- ``_changed_at_<column>`` for every data column: the run timestamp at which
  that column's value last changed (a new row stamps every column);
- ``_changed_at``: the run timestamp of the row's latest change of any kind,
  indexed, so that selecting what changed since a watermark is a range scan;
- ``_deleted_at``: NULL while the row is live, the run timestamp of its soft
  deletion otherwise; a key that returns is revived and stamps every column;
- ``_live_since``: the run timestamp at which the row was inserted or last
  revived, so that a lookup can notice a partner appearing;
- ``_row_hash``: the hash of the source record an extract loaded the row
  from, so that a reload can skip records that did not change.

These names are reserved; any other column name (quoted wherever it is
used) may come from data, up to PostgreSQL's 63 bytes. The definitions are
kept in the registry table ``loader_tables``; new columns are added with
``ALTER TABLE`` and recorded in ``loader_schema_history``.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loader import meta
from loader.coltypes import Stamp, sql_type
from loader.errors import SchemaError

CHANGED_AT = "_changed_at"
DELETED_AT = "_deleted_at"
LIVE_SINCE = "_live_since"
ROW_HASH = "_row_hash"
PHYSICAL_SUFFIX = "_tracked"


INTERNAL = (CHANGED_AT, DELETED_AT, LIVE_SINCE, ROW_HASH)
MAX_NAME_BYTES = 63


def stamp(column: str) -> str:
    """The name of the column holding ``column``'s last-change timestamp.

    Names that would exceed PostgreSQL's 63 bytes end in a hash of the column name.
    """
    name = f"_changed_at_{column}"
    if len(name.encode()) <= MAX_NAME_BYTES:
        return name
    digest = hashlib.blake2b(column.encode(), digest_size=4).hexdigest()
    prefix = name.encode()[:MAX_NAME_BYTES - 9].decode("utf-8", "ignore")
    return f"{prefix}_{digest}"


def stamp_literal(value: datetime) -> sa.BindParameter[datetime]:
    """``value`` (a run's timestamp, a watermark) bound as the stamp columns store it:
    compared with or written to a stamp, it must be of their type (on SQLite an
    integer, which text would never equal)."""
    return sa.literal(value, Stamp())


def check_column_name(name: str) -> str:
    """``name`` if it can be a column (quoted wherever it is used); SchemaError otherwise."""
    if not name or name != name.strip():
        raise SchemaError(f"column name {name!r} is empty or has surrounding spaces")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise SchemaError(f"column name {name!r} holds control characters")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise SchemaError(f"column name {name!r} is longer than {MAX_NAME_BYTES} bytes")
    if name.lower() in INTERNAL or name.lower().startswith("_changed_at_"):
        raise SchemaError(f"column name {name!r} is reserved for the loader's own columns")
    return name


# Stand-ins for NULL in nullable keys, written as SQL so that a query's expression is
# the very one of the index built on it.
_SENTINELS = {
    "text": "'\x01'::text", "integer": "(-4611686018427387904)::bigint",
    "date": "'0001-01-01'::date", "timestamp": "'0001-01-01 00:00:00'::timestamp",
    "boolean": "false",
}


def null_safe_key(column: sa.ColumnElement[Any], type_name: str) -> sa.ColumnElement[Any]:
    """``column`` with NULL replaced by a sentinel of its type (PostgreSQL).

    Comparing two such expressions matches NULL with NULL in a form PostgreSQL can
    hash-join, and, through an index on the same expression, look up.
    """
    sentinel = _SENTINELS.get(type_name, "(-1000000000000000000000000000000)::numeric")
    return sa.func.coalesce(column, sa.literal_column(sentinel))


def physical_name(table: str) -> str:
    return f"{table}{PHYSICAL_SUFFIX}"


def written_after(conn: Connection, tables: Iterable[str], since: datetime) -> bool:
    """Whether a run after ``since`` wrote to any of these tracked tables.

    Every write (a new row, a changed cell, a deletion, a revival) stamps the row's
    ``_changed_at`` with its run's timestamp, so one look at each table's index on it
    tells: all in one statement, the tables after the first written one unread.
    """
    after = stamp_literal(since)
    written = []
    for name in tables:
        t = sa.table(physical_name(name), sa.column(CHANGED_AT, Stamp()))
        written.append(sa.exists().where(t.c[CHANGED_AT] > after))
    return bool(written) and bool(conn.execute(sa.select(sa.or_(*written))).scalar_one())


@dataclass(frozen=True)
class Col:
    """A column of a tracked table: a name and a type name (see ``coltypes``)."""

    name: str
    type: str = "text"

    def __post_init__(self) -> None:
        check_column_name(self.name)
        sql_type(self.type)


def cols(spec: str | Iterable[str | Col | tuple[str, str]]) -> tuple[Col, ...]:
    """Columns from ``"a, b:integer"``, names, ``Col``s or ``(name, type)`` pairs."""
    items: Iterable[str | Col | tuple[str, str]]
    items = [part.strip() for part in spec.split(",") if part.strip()] \
        if isinstance(spec, str) else spec
    result = []
    for item in items:
        if isinstance(item, Col):
            result.append(item)
        elif isinstance(item, tuple):
            result.append(Col(item[0], item[1]))
        else:
            name, _, type_name = item.partition(":")
            result.append(Col(name.strip(), type_name.strip() or "text"))
    return tuple(result)


@dataclass(frozen=True)
class TrackedTable:
    """The definition of a tracked table: key columns and tracked data columns.

    ``nullable_key`` allows NULL in key columns (an aggregate's groups may
    have a NULL group value); keys are then matched NULL-safely.
    """

    name: str
    key: tuple[Col, ...]
    columns: tuple[Col, ...] = ()
    nullable_key: bool = False
    indexes: tuple[tuple[str, ...], ...] = field(default=())

    @property
    def physical(self) -> str:
        return physical_name(self.name)

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.key)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def all_columns(self) -> tuple[Col, ...]:
        return self.key + self.columns

    def col(self, name: str) -> Col:
        for column in self.all_columns:
            if column.name == name:
                return column
        raise SchemaError(f"table {self.name!r} has no column {name!r}")

    def with_columns(self, extra: Sequence[Col]) -> TrackedTable:
        known = {c.name.lower() for c in self.all_columns}
        new = [c for c in extra if c.name.lower() not in known]
        return replace(self, columns=self.columns + tuple(new)) if new else self

    @functools.cached_property
    def table(self) -> sa.Table:
        """The physical table as a SQLAlchemy ``Table``."""
        md = sa.MetaData()
        columns: list[sa.Column[Any]] = [
            sa.Column(c.name, sql_type(c.type), primary_key=not self.nullable_key,
                      nullable=self.nullable_key)
            for c in self.key
        ]
        columns += [sa.Column(c.name, sql_type(c.type)) for c in self.columns]
        columns += [sa.Column(stamp(c.name), Stamp()) for c in self.columns]
        columns += [
            sa.Column(CHANGED_AT, Stamp(), nullable=False),
            sa.Column(DELETED_AT, Stamp()),
            sa.Column(LIVE_SINCE, Stamp(), nullable=False),
            sa.Column(ROW_HASH, sa.BigInteger),
        ]
        table = sa.Table(self.physical, md, *columns)
        sa.Index(f"ix_{self.name}_changed", table.c[CHANGED_AT])
        if self.nullable_key:
            sa.Index(f"ix_{self.name}_key", *(table.c[n] for n in self.key_names))
            # PostgreSQL matches nullable keys through null_safe_key, which this serves.
            sa.Index(f"ix_{self.name}_keyc",
                     *(null_safe_key(table.c[c.name], c.type) for c in self.key)
                     ).ddl_if(dialect="postgresql")
        for index_cols in self.indexes:
            sa.Index(_index_name(self.name, index_cols), *(table.c[n] for n in index_cols))
        return table

    def to_registry(self) -> dict[str, str]:
        return {
            "name": self.name,
            "key": json.dumps({"columns": [[c.name, c.type] for c in self.key],
                               "nullable": self.nullable_key}),
            "columns": json.dumps([[c.name, c.type] for c in self.columns]),
        }

    @classmethod
    def from_registry(cls, row: Any) -> TrackedTable:
        key = json.loads(row.key)
        return cls(
            name=row.name,
            key=tuple(Col(n, t) for n, t in key["columns"]),
            columns=tuple(Col(n, t) for n, t in json.loads(row.columns)),
            nullable_key=bool(key["nullable"]),
        )


def _index_name(table: str, columns: Sequence[str]) -> str:
    name = f"ix_{table}__{'_'.join(columns)}"
    if len(name) > 60:
        digest = hashlib.blake2b(name.encode(), digest_size=4).hexdigest()
        name = f"{name[:50]}_{digest}"
    return name


def load_table(conn: Connection, name: str) -> TrackedTable | None:
    """The registered definition of table ``name``, or None if it does not exist."""
    row = conn.execute(sa.select(meta.tables).where(meta.tables.c.name == name)).first()
    return TrackedTable.from_registry(row) if row is not None else None


def require_table(conn: Connection, name: str) -> TrackedTable:
    table = load_table(conn, name)
    if table is None:
        raise SchemaError(f"table {name!r} does not exist in the warehouse yet: run the flow "
                          "that creates it first")
    return table


def ensure_table(conn: Connection, wanted: TrackedTable, *, run_id: int | None,
                 now: datetime, reason: str = "", build_indexes: bool = True) -> TrackedTable:
    """Create ``wanted`` or add its missing columns; return the full definition.

    Columns already in the warehouse are kept (with their types); a column
    whose type differs from the stored one is an error. Every change is
    recorded in the schema history, and the view is recreated. Missing
    indexes of ``wanted`` are built, unless ``build_indexes`` is false: then
    the caller builds them with :func:`ensure_indexes` (after a big write,
    say, which they would otherwise slow down).
    """
    current = load_table(conn, wanted.name)
    history: list[dict[str, Any]] = []
    if current is None:
        table = wanted
        table.table.create(conn)
        conn.execute(meta.tables.insert().values(**table.to_registry()))
        history.append({"change": "create", "column_name": None, "column_type": None})
    else:
        if current.key_names != wanted.key_names:
            raise SchemaError(
                f"table {wanted.name!r} is keyed by {', '.join(current.key_names)} in the "
                f"warehouse, not by {', '.join(wanted.key_names)}"
            )
        stored = {c.name.lower(): c for c in current.all_columns}
        for column in wanted.columns:
            old = stored.get(column.name.lower())
            if old is not None and old.type != column.type:
                raise SchemaError(
                    f"column {wanted.name}.{column.name} is {old.type} in the warehouse, "
                    f"not {column.type}"
                )
        table = current.with_columns(wanted.columns)
        added = table.columns[len(current.columns):]
        physical = sa.table(table.physical)
        for column in added:
            _add_column(conn, physical.name, column)
            history.append({"change": "add_column", "column_name": column.name,
                            "column_type": column.type})
        if added:
            conn.execute(meta.tables.update().where(meta.tables.c.name == table.name)
                         .values(columns=table.to_registry()["columns"]))
        table = replace(table, indexes=wanted.indexes)
        if build_indexes:
            ensure_indexes(conn, table)
    if history:
        conn.execute(meta.schema_history.insert(), [
            {"table_name": table.name, "reason": reason or None, "run_id": run_id,
             "changed_at": now, **entry}
            for entry in history
        ])
        create_view(conn, table)
    return table


def _add_column(conn: Connection, physical: str, column: Col) -> None:
    preparer = conn.dialect.identifier_preparer
    for name, type_ in ((column.name, sql_type(column.type)), (stamp(column.name), Stamp())):
        type_sql = type_.compile(dialect=conn.dialect)
        conn.exec_driver_sql(
            f"ALTER TABLE {preparer.quote(physical)} ADD COLUMN {preparer.quote(name)} {type_sql}"
        )


def ensure_indexes(conn: Connection, table: TrackedTable) -> None:
    """Build the indexes of ``table`` that the warehouse does not have, its key included.

    (A bulk write on PostgreSQL may drop them and build them again after committing.)
    """
    physical = table.table
    key = physical.primary_key
    existing, keyed = _index_names(conn, table.physical)
    if conn.dialect.name == "postgresql" and key.columns and not keyed:
        conn.execute(sa.schema.AddConstraint(key))
    for index in physical.indexes:
        if index.name not in existing:
            index.create(conn)


def _index_names(conn: Connection, table: str) -> tuple[set[str], bool]:
    """The names of ``table``'s indexes, and whether it has a primary key (on SQLite,
    where the key is part of the table, always): one catalog query, where SQLAlchemy's
    reflection of the same takes four on PostgreSQL."""
    quoted = conn.dialect.identifier_preparer.quote(table)
    if conn.dialect.name == "postgresql":
        found = conn.execute(sa.text(
            "SELECT c.relname, x.indisprimary FROM pg_index x"
            " JOIN pg_class c ON c.oid = x.indexrelid WHERE x.indrelid = to_regclass(:t)"),
            {"t": quoted}).all()
        return {row[0] for row in found}, any(row[1] for row in found)
    found = conn.exec_driver_sql(f"PRAGMA index_list({quoted})").all()
    return {row[1] for row in found}, True


def create_view(conn: Connection, table: TrackedTable) -> None:
    """(Re)create the view that shows the live rows and user columns of ``table``."""
    physical = table.table
    select = sa.select(*(physical.c[c.name] for c in table.all_columns)).where(
        physical.c[DELETED_AT].is_(None)
    )
    body = str(select.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    view = conn.dialect.identifier_preparer.quote(table.name)
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"CREATE OR REPLACE VIEW {view} AS {body}")
    else:
        conn.exec_driver_sql(f"DROP VIEW IF EXISTS {view}")
        conn.exec_driver_sql(f"CREATE VIEW {view} AS {body}")

