"""On SQLite, the change stamps of tracked tables as integers: microseconds since 1970
(UTC), where they were text (``YYYY-MM-DD HH:MM:SS.ffffff``). PostgreSQL keeps its
timestamps; there this revision changes nothing.

Every table in the registry (``loader_tables``) is converted in the upgrade's
transaction: its ``_changed_at_<column>``, ``_changed_at``, ``_deleted_at`` and
``_live_since`` columns. Values that are integers already stay as they are.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TO_MICROS = ("CASE WHEN typeof({c}) = 'text' THEN"
             " CAST(strftime('%s', substr({c}, 1, 19)) AS INTEGER) * 1000000"
             " + CAST(substr({c} || '000000', 21, 6) AS INTEGER) ELSE {c} END")
# SQLite's % keeps the dividend's sign: the microseconds of a moment before 1970 are
# ((c % 1000000) + 1000000) % 1000000, and its whole seconds what is left of it.
_MICROS = "((({c} % 1000000) + 1000000) % 1000000)"
TO_TEXT = ("CASE WHEN typeof({c}) = 'integer' THEN"
           " strftime('%Y-%m-%d %H:%M:%S', ({c} - " + _MICROS + ") / 1000000, 'unixepoch')"
           " || printf('.%06d', " + _MICROS + ") ELSE {c} END")


def _convert(expression: str) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    quote = bind.dialect.identifier_preparer.quote
    names = [row[0] for row in bind.exec_driver_sql("SELECT name FROM loader_tables")]
    for name in names:
        physical = f"{name}_tracked"
        columns = [row[1] for row in bind.exec_driver_sql(
            f"PRAGMA table_info({quote(physical)})")]
        stamps = [c for c in columns
                  if c.startswith("_changed_at") or c in ("_deleted_at", "_live_since")]
        if stamps:
            bind.exec_driver_sql(f"UPDATE {quote(physical)} SET " + ", ".join(
                f"{quote(c)} = {expression.format(c=quote(c))}" for c in stamps))


def upgrade() -> None:
    _convert(TO_MICROS)


def downgrade() -> None:
    _convert(TO_TEXT)
