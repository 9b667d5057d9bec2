"""PostgreSQL bulk path: ``COPY ... FROM STDIN`` through psycopg 3.

Rows stream into COPY as they are produced, so the server ingests while the
loader parses.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loader import facts


@contextmanager
def writer(conn: Connection, table: sa.Table) -> Iterator[Callable[[Sequence[Any]], None]]:
    preparer = conn.dialect.identifier_preparer
    columns = ", ".join(preparer.quote(c.name) for c in table.columns)
    sql = f"COPY {preparer.quote(table.name)} ({columns}) FROM STDIN"
    driver = conn.connection.driver_connection
    assert driver is not None
    with driver.cursor() as cursor, cursor.copy(sql) as copy:
        yield copy.write_row


@contextmanager
def text_writer(conn: Connection, table: str,
                columns: Sequence[str]) -> Iterator[Callable[[str | bytes], None]]:
    """A function that sends lines already in COPY's text format to ``table``'s ``columns``
    (as text, or as UTF-8 bytes)."""
    preparer = conn.dialect.identifier_preparer
    sql = (f"COPY {preparer.quote(table)} ({', '.join(preparer.quote(c) for c in columns)}) "
           "FROM STDIN")
    driver = conn.connection.driver_connection
    assert driver is not None
    with driver.cursor() as cursor, cursor.copy(sql) as copy:
        yield copy.write


@contextmanager
def filled_by_default(conn: Connection, table: str, columns: Sequence[str],
                      value: datetime) -> Iterator[None]:
    """Give ``table``'s timestamp ``columns`` the constant ``value`` as default in the block.

    A bulk load that writes the same value into many columns of every row leaves them out
    of its COPY instead, which spares the server from reading each of them per row. The
    defaults are dropped again in the same transaction (on error, the rollback drops them).
    """
    preparer = conn.dialect.identifier_preparer
    name = preparer.quote(table)
    # DDL takes no parameters; an isoformat text holds nothing that needs quoting.
    literal = f"'{value.isoformat(' ')}'::timestamp"
    conn.exec_driver_sql(f"ALTER TABLE {name} " + ", ".join(
        f"ALTER COLUMN {preparer.quote(c)} SET DEFAULT {literal}" for c in columns))
    yield
    conn.exec_driver_sql(f"ALTER TABLE {name} " + ", ".join(
        f"ALTER COLUMN {preparer.quote(c)} DROP DEFAULT" for c in columns))


@contextmanager
def indexes_built_after(conn: Connection, table: str) -> Iterator[None]:
    """Drop ``table``'s indexes (and key constraints) for the block, then build them again.

    Building an index over a freshly loaded table is several times faster than keeping it
    up to date row by row. Everything happens in the caller's transaction.
    """
    dropped = drop_indexes(conn, table)
    yield
    build_indexes(conn, dropped)


def drop_indexes(conn: Connection, table: str) -> list[str]:
    """Drop ``table``'s indexes and key constraints; return the statements that build them.

    Run the statements in a later transaction where they can: PostgreSQL builds an index
    with parallel workers only over rows that the building transaction did not write.
    """
    preparer = conn.dialect.identifier_preparer
    name = preparer.quote(table)
    builds = []
    for index, constraint, build in _indexes(conn, table):
        if constraint is not None:
            conn.exec_driver_sql(f"ALTER TABLE {name} DROP CONSTRAINT {constraint}")
        else:
            conn.exec_driver_sql(f"DROP INDEX {index}")
        builds.append(build)
    return builds


def _indexes(conn: Connection, table: str) -> list[tuple[str, str | None, str]]:
    """``table``'s indexes: the name of each (as SQL), of its key constraint if it backs one
    (quoted), and the statement that builds it again."""
    preparer = conn.dialect.identifier_preparer
    name = preparer.quote(table)
    found = conn.execute(sa.text(
        "SELECT x.indexrelid::regclass::text AS index_name, pg_get_indexdef(x.indexrelid) AS ddl,"
        " c.conname AS constraint, pg_get_constraintdef(c.oid) AS definition"
        " FROM pg_index x LEFT JOIN pg_constraint c"
        " ON c.conindid = x.indexrelid AND c.conrelid = x.indrelid AND c.contype IN ('p', 'u')"
        " WHERE x.indrelid = to_regclass(:t)"), {"t": name}).all()
    indexes: list[tuple[str, str | None, str]] = []
    for row in found:
        if row.constraint is not None:
            constraint = preparer.quote(row.constraint)
            indexes.append((row.index_name, constraint,
                            f"ALTER TABLE {name} ADD CONSTRAINT {constraint} {row.definition}"))
        else:
            indexes.append((row.index_name, None, row.ddl))
    return indexes


# What may depend on a table that is swapped for a rewritten copy: its row type, its
# indexes and TOAST table, its key, unique and check constraints, its column defaults,
# the view that shows it, and the trigger that counts its writes (``loader.facts``:
# dropped with the old table, it tells that values remembered over it are stale).
# Anything else (a foreign key, another view, another trigger, a policy, statistics, an
# owned sequence...) would be lost or would block the swap, and so would the table's
# settings, or its being in another schema than the current one (where the copy and the
# view are made).
_SWAP_BLOCKERS = """
SELECT DISTINCT pg_describe_object(d.classid, d.objid, 0) AS what
FROM pg_depend d
WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = to_regclass(:t)
  AND d.classid <> 'pg_type'::regclass
  AND d.classid <> 'pg_attrdef'::regclass
  AND NOT (d.classid = 'pg_class'::regclass AND d.objid IN (
      SELECT indexrelid FROM pg_index WHERE indrelid = to_regclass(:t)
      UNION ALL SELECT reltoastrelid FROM pg_class WHERE oid = to_regclass(:t)))
  AND NOT (d.classid = 'pg_constraint'::regclass AND d.objid IN (
      SELECT oid FROM pg_constraint WHERE conrelid = to_regclass(:t)
      AND contype IN ('p', 'u', 'c')))
  AND NOT (d.classid = 'pg_rewrite'::regclass AND d.objid IN (
      SELECT oid FROM pg_rewrite WHERE ev_class = to_regclass(:v)))
  AND NOT (d.classid = 'pg_trigger'::regclass AND d.objid IN (
      SELECT oid FROM pg_trigger WHERE tgrelid = to_regclass(:t) AND tgname = :counting))
UNION ALL
SELECT 'table settings' FROM pg_class c
WHERE c.oid = to_regclass(:t) AND (
  c.relacl IS NOT NULL OR c.reloptions IS NOT NULL OR c.relpersistence <> 'p'
  OR c.reltablespace <> 0 OR c.relkind <> 'r' OR c.relispartition OR c.relrowsecurity
  OR c.relnamespace <> (SELECT oid FROM pg_namespace WHERE nspname = current_schema())
  OR c.relreplident <> 'd' OR c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = current_user)
  OR EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = c.oid)
  OR EXISTS (SELECT 1 FROM pg_description WHERE objoid = c.oid
             AND classoid = 'pg_class'::regclass)
  OR EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
             AND NOT a.attisdropped AND (a.attacl IS NOT NULL OR a.attidentity <> ''
             OR a.attgenerated <> '' OR a.attstattarget >= 0
             OR EXISTS (SELECT 1 FROM unnest(a.attoptions) o WHERE o LIKE 'n\\_distinct%'))))
"""


def swap_blockers(conn: Connection, table: str, view: str, columns: Sequence[str]) -> list[str]:
    """What would stop ``table`` (shown by ``view``) from being swapped for a copy that
    writes ``columns``, with :func:`swapped`: an empty list when nothing would."""
    preparer = conn.dialect.identifier_preparer
    found = list(conn.execute(sa.text(_SWAP_BLOCKERS), {
        "t": preparer.quote(table), "v": preparer.quote(view), "counting": facts.TRIGGER,
    }).scalars())
    present = conn.execute(sa.text(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(:t) AND attnum > 0"
        " AND NOT attisdropped"), {"t": preparer.quote(table)}).scalars()
    found += [f"column {name} is not written" for name in set(present) - set(columns)]
    return found


def lock_writes(conn: Connection, table: str) -> None:
    """Keep other transactions from writing ``table`` until the caller's ends (reading
    it stays allowed)."""
    conn.exec_driver_sql(f"LOCK TABLE {conn.dialect.identifier_preparer.quote(table)} "
                         "IN EXCLUSIVE MODE")


@dataclass(frozen=True)
class Swap:
    """The new table to fill (its name, unquoted), and the statements that build the
    indexes and key of the table it replaces, to run once it has."""

    fresh: str
    builds: list[str]


@contextmanager
def swapped(conn: Connection, table: str, show: Callable[[], None]) -> Iterator[Swap]:
    """Give the block a new empty table shaped like ``table`` to fill, without indexes;
    then put it in ``table``'s place, under its name, and drop the old one.

    ``show`` recreates the views over ``table`` (which follow the old table until then).
    Writes to ``table`` are locked out from the start, so that none is lost. Check
    :func:`swap_blockers` first; everything happens in the caller's transaction.
    """
    preparer = conn.dialect.identifier_preparer
    name = preparer.quote(table)
    lock_writes(conn, table)
    oid = conn.execute(sa.text("SELECT to_regclass(:t)::oid"), {"t": name}).scalar_one()
    fresh, old = f"_loader_new_{oid}", preparer.quote(f"_loader_old_{oid}")
    conn.exec_driver_sql(
        f"CREATE TABLE {preparer.quote(fresh)} (LIKE {name} INCLUDING DEFAULTS "
        "INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMPRESSION)")
    yield Swap(fresh, [build for _, _, build in _indexes(conn, table)])
    conn.exec_driver_sql(f"ALTER TABLE {name} RENAME TO {old}")
    conn.exec_driver_sql(f"ALTER TABLE {preparer.quote(fresh)} RENAME TO {name}")
    show()
    conn.exec_driver_sql(f"DROP TABLE {old}")


def build_indexes(conn: Connection, builds: Sequence[str]) -> None:
    """Run statements from :func:`drop_indexes`."""
    for statement in builds:
        conn.exec_driver_sql(statement)


# PostgreSQL's own default: the sessions' lower cost suits lookups through indexes, but
# makes the planner walk an index over every row of a table to get groups in order.
SCAN_PAGE_COST = 4.0
NOT_SCANS = ("enable_nestloop", "enable_indexscan", "enable_indexonlyscan", "enable_bitmapscan")


@contextmanager
def planned_as_scans(conn: Connection, *, only: bool = False) -> Iterator[None]:
    """Plan the block's statements, which read whole tables, with the default random
    page cost, so that they scan the table instead of following an index row by row.

    Measured on 1,000,000 sales: grouping them by customer took 1.67 s through the
    customer index (random_page_cost 1.1), 0.80 s from a sequential scan (4).

    ``only`` goes further, for a join with a large share of a table: no index and no
    nested loop at all. The planner costs a memoized index lookup for each outer row
    too low, and, without nested loops, merges through an index in key order, which
    reads the heap in random order too.
    """
    if conn.dialect.name != "postgresql":
        yield
        return
    settings = {"random_page_cost": str(SCAN_PAGE_COST),
                **(dict.fromkeys(NOT_SCANS, "off") if only else {})}
    before = {name: conn.exec_driver_sql(f"SHOW {name}").scalar_one() for name in settings}
    for name, value in settings.items():
        conn.exec_driver_sql(f"SET LOCAL {name} = {value}")
    yield
    for name, value in before.items():
        conn.exec_driver_sql(f"SET LOCAL {name} = {value}")


_statistics = itertools.count(1)


def expression_statistics(conn: Connection, table: sa.Table,
                          expressions: Sequence[sa.ColumnElement[Any]]) -> None:
    """Have the next ANALYZE of the temporary ``table`` gather statistics of each of
    ``expressions``; they go when the table does.

    ANALYZE counts the distinct values of columns, not of expressions over them, unless
    an index or a statistics object names the expression, and the planner guesses the
    rest. At 1,000,000 sales, a 1% refresh matched 19,467 staged customer groups with
    118,819 on ``coalesce(customer_id, ...)``: the planner, expecting 13.7 million rows,
    merge-joined through a full scan of the key index. The merge's four statements took
    0.67-0.94 s so, 0.45-0.58 s with the stage's statistics (three alternating runs).
    """
    if (conn.dialect.server_version_info or (0,)) < (14,):  # expression statistics: 14+
        return
    preparer = conn.dialect.identifier_preparer
    for expression in expressions:
        sql = expression.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
        conn.exec_driver_sql(f"CREATE STATISTICS pg_temp._stats_{next(_statistics)} "
                             f"ON ({sql}) FROM {preparer.quote(table.name)}")


def estimated_rows(conn: Connection, table: str) -> float:
    """The planner's row count of ``table``, or its count when it was never analysed."""
    name = conn.dialect.identifier_preparer.quote(table)
    found = conn.execute(sa.text("SELECT reltuples FROM pg_class WHERE oid = to_regclass(:t)"),
                         {"t": name}).scalar()
    if found is None or found < 0:
        return float(conn.exec_driver_sql(f"SELECT count(*) FROM {name}").scalar_one())
    return float(found)
