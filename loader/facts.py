"""Values computed over a whole table, remembered until the table is next written to.

A validation check that adds up a large table reads all of it, and a refresh that
changed nothing of the table would read it again for the same sums. ``remembered``
gives the value computed before instead, as long as nothing can have written to the
table since.

On PostgreSQL a statement-level trigger, ``loader_count_writes``, is put on each table
that has remembered values. It counts every INSERT, UPDATE, DELETE, COPY and TRUNCATE
of such a table, the loader's or anyone's (a row edited by hand included), in the
sequence ``loader_write_count``. A statement that writes no row counts too, as does one
whose transaction rolls back, and a write to any of these tables counts for all of
them: the count may make a value be computed again for nothing, never the other way.
A value is used again only while its table has the trigger it had when the value was
computed (a table written anew and swapped in has none, then a new one) and the count
has not moved since. Writes that skip triggers (``session_replication_role = replica``,
a trigger disabled by hand) are not counted: a disabled trigger is seen, and its
table's values are then computed every time.

SQLite has no statement triggers, and a row trigger would cost every bulk write, so
there the value is computed every time.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loader import meta
from loader.warehouse import db_now

TRIGGER = "loader_count_writes"


@dataclass(frozen=True)
class Fact:
    """A remembered value, and the run that computed it."""

    value: Any
    run_id: int | None
    reused: bool


def remembered(conn: Connection, table: str, name: str, compute: Callable[[], Any], *,
               run_id: int | None) -> Fact:
    """The value ``compute`` gives over ``table`` (as JSON gives it back), computed
    again only when ``table`` may have been written to since it was last computed.

    ``name`` tells values of one table apart. The value is stored in ``conn``'s
    transaction, which the caller commits.
    """
    trigger = None
    if conn.dialect.name == "postgresql":
        trigger = _trigger(conn, table) or _count_writes(conn, table)
    if trigger is None or not trigger.enabled:
        # SQLite; no such table (``compute`` says so); or writes go uncounted.
        return Fact(_as_stored(compute()), run_id, reused=False)
    # Counted before the value is computed: a write while it is, or after, moves it.
    writes = conn.exec_driver_sql(
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM loader_write_count"
    ).scalar_one()
    f = meta.table_facts
    where = (f.c.table_name == table, f.c.name == name)
    kept = conn.execute(sa.select(f.c.trigger_oid, f.c.writes, f.c.value, f.c.run_id)
                        .where(*where)).first()
    if kept is not None and kept.trigger_oid == trigger.oid and kept.writes == writes:
        return Fact(json.loads(kept.value), kept.run_id, reused=True)
    text = json.dumps(compute())
    conn.execute(f.delete().where(*where))
    conn.execute(f.insert().values(table_name=table, name=name, trigger_oid=trigger.oid,
                                   writes=writes, value=text, run_id=run_id,
                                   computed_at=db_now(conn)))
    return Fact(json.loads(text), run_id, reused=False)


def _as_stored(value: Any) -> Any:
    """``value`` as it comes back from being stored: the same types on every dialect."""
    return json.loads(json.dumps(value))


class _Trigger(NamedTuple):
    oid: int
    enabled: bool


def _trigger(conn: Connection, table: str) -> _Trigger | None:
    """``table``'s counting trigger; None without."""
    row = conn.execute(sa.text(
        "SELECT t.oid, t.tgenabled <> 'D' FROM pg_trigger t "
        "WHERE t.tgrelid = to_regclass(:t) AND t.tgname = :name"),
        {"t": _quoted(conn, table), "name": TRIGGER}).first()
    return None if row is None else _Trigger(int(row[0]), bool(row[1]))


def _count_writes(conn: Connection, table: str) -> _Trigger | None:
    """Put the counting trigger on ``table``; None when there is no such table.

    Creating it locks out writers until the transaction ends, so no write falls between
    the trigger and the count read after it.
    """
    exists = conn.execute(sa.text("SELECT to_regclass(:t) IS NOT NULL"),
                          {"t": _quoted(conn, table)}).scalar_one()
    if not exists:
        return None
    conn.exec_driver_sql(
        f"CREATE TRIGGER {TRIGGER} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE "
        f"ON {_quoted(conn, table)} FOR EACH STATEMENT EXECUTE FUNCTION loader_count_write()")
    return _trigger(conn, table)


def _quoted(conn: Connection, table: str) -> str:
    return conn.dialect.identifier_preparer.quote(table)
