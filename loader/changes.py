"""What changed in a tracked table since a run or a moment: cell by cell.

Every live or deleted row stamped at or after ``since`` contributes one
entry per column whose stamp is at or after it, and one ``(deleted)`` entry
if it was deleted then. ``--since RUN_ID`` means "by that run or later".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loader import meta
from loader.errors import ConfigError
from loader.sources.csvfile import parse_timestamp
from loader.tracking import CHANGED_AT, DELETED_AT, require_table, stamp, stamp_literal

DELETED = "(deleted)"


@dataclass(frozen=True)
class CellChange:
    """One cell that changed: the row's key, the column, when."""

    key: dict[str, Any]
    column: str
    changed_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "column": self.column,
                "changed_at": self.changed_at.isoformat(sep=" ")}


def resolve_since(conn: Connection, since: str) -> datetime:
    """A run id's timestamp, or an ISO timestamp (UTC when it has no offset)."""
    text = since.strip()
    if text.isdigit():
        run_ts = conn.execute(sa.select(meta.runs.c.run_ts)
                              .where(meta.runs.c.run_id == int(text))).scalar()
        if run_ts is None:
            raise ConfigError(f"--since {text}: no run with that id (see loader runs)")
        return run_ts if isinstance(run_ts, datetime) else datetime.fromisoformat(run_ts)
    try:
        return parse_timestamp(text)
    except ValueError:
        raise ConfigError(f"--since {text!r} is neither a run id nor an ISO timestamp") from None


def changes(conn: Connection, table: str, since: datetime,
            columns: list[str] | None = None, limit: int | None = None) -> list[CellChange]:
    """The cells of ``table`` changed at or after ``since``, oldest first."""
    definition = require_table(conn, table)
    wanted = columns or list(definition.column_names)
    for column in wanted:
        if column not in definition.column_names:
            raise ConfigError(f"table {table!r} has no tracked column {column!r}; it has "
                              f"{', '.join(definition.column_names)}")
    t = definition.table
    at = stamp_literal(since)
    query = sa.select(
        *(t.c[k] for k in definition.key_names), t.c[DELETED_AT],
        *(t.c[stamp(c)] for c in wanted),
    ).where(t.c[CHANGED_AT] >= at).order_by(t.c[CHANGED_AT],
                                             *(t.c[k] for k in definition.key_names))
    found: list[CellChange] = []
    width = len(definition.key_names)
    for row in conn.execute(query):
        key = dict(zip(definition.key_names, row[:width], strict=True))
        deleted = row[width]
        if deleted is not None and deleted >= since:
            found.append(CellChange(key, DELETED, deleted))
        for column, when in zip(wanted, row[width + 1:], strict=True):
            if when is not None and when >= since:
                found.append(CellChange(key, column, when))
        if limit is not None and len(found) >= limit:
            return found[:limit]
    return found
