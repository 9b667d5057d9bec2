"""The loader's own tables: runs, task runs, watermarks, locks, schema history,
the registry of tracked tables, loaded sources, remembered table sums, rejects and
exceptions.

They are created and upgraded by the Alembic migrations in ``migrations/``;
these definitions are what the code queries, and a test checks that they
match what the migrations create.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

runs = sa.Table(
    "loader_runs", metadata,
    sa.Column("run_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("flow", sa.Text, nullable=False),
    sa.Column("mode", sa.Text, nullable=False),
    sa.Column("params", sa.Text, nullable=False, server_default="{}"),
    sa.Column("only_tasks", sa.Text),
    sa.Column("run_ts", sa.DateTime, nullable=False, unique=True),
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("ended_at", sa.DateTime),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("host", sa.Text),
    sa.Column("task_ids", sa.Text),
)

task_runs = sa.Table(
    "loader_task_runs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("loader_runs.run_id"), nullable=False,
              index=True),
    sa.Column("task", sa.Text, nullable=False),
    sa.Column("celery_id", sa.Text),
    sa.Column("worker", sa.Text),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("ended_at", sa.DateTime),
    sa.Column("seconds", sa.Float),
    sa.Column("rows_read", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("inserted", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("updated", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("deleted", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("rejected", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("changes", sa.Text, nullable=False, server_default="{}"),
    sa.Column("watermark_before", sa.Text),
    sa.Column("watermark_after", sa.Text),
    sa.Column("details", sa.Text, nullable=False, server_default="{}"),
    sa.Column("error", sa.Text),
)

watermarks = sa.Table(
    "loader_watermarks", metadata,
    sa.Column("processor", sa.Text, primary_key=True),
    sa.Column("input", sa.Text, primary_key=True),
    sa.Column("watermark", sa.DateTime, nullable=False),
    sa.Column("version", sa.Text, nullable=False, server_default=""),
)

locks = sa.Table(
    "loader_locks", metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("holder", sa.Text, nullable=False),
    sa.Column("run_id", sa.Integer),
    sa.Column("acquired_at", sa.DateTime, nullable=False),
    sa.Column("heartbeat_at", sa.DateTime, nullable=False),
    sa.Column("expires_at", sa.DateTime, nullable=False),
)

schema_history = sa.Table(
    "loader_schema_history", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("table_name", sa.Text, nullable=False),
    sa.Column("change", sa.Text, nullable=False),
    sa.Column("column_name", sa.Text),
    sa.Column("column_type", sa.Text),
    sa.Column("reason", sa.Text),
    sa.Column("run_id", sa.Integer),
    sa.Column("changed_at", sa.DateTime, nullable=False),
)

tables = sa.Table(
    "loader_tables", metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("columns", sa.Text, nullable=False),
)

sources = sa.Table(
    "loader_sources", metadata,
    sa.Column("processor", sa.Text, primary_key=True),
    sa.Column("source", sa.Text, primary_key=True),
    sa.Column("partition", sa.Text),
    sa.Column("content_hash", sa.Text, nullable=False),
    sa.Column("size", sa.BigInteger),  # bytes, when loaded (NULL before migration 0002)
    sa.Column("header", sa.Text),
    sa.Column("run_id", sa.Integer),
    sa.Column("loaded_at", sa.DateTime, nullable=False),
    # The row hashes of the partition's live rows after the load, 8 bytes each (big-endian);
    # NULL when not kept (a first load, or loads before migration 0004).
    sa.Column("row_hashes", sa.LargeBinary),
)

# A value computed over a whole table, kept while the table is not written to (see
# ``loader.facts``): the trigger that counts its writes, and the count when computed.
table_facts = sa.Table(
    "loader_table_facts", metadata,
    sa.Column("table_name", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("trigger_oid", sa.BigInteger, nullable=False),
    sa.Column("writes", sa.BigInteger, nullable=False),
    sa.Column("value", sa.Text, nullable=False),  # JSON
    sa.Column("run_id", sa.Integer),
    sa.Column("computed_at", sa.DateTime, nullable=False),
)

rejects = sa.Table(
    "rejects", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("source", sa.Text, nullable=False, index=True),
    sa.Column("line", sa.Integer, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("raw", sa.Text, nullable=False),
    sa.Column("run_id", sa.Integer),
    sa.Column("rejected_at", sa.DateTime, nullable=False),
)

exceptions = sa.Table(
    "exceptions", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("rule", sa.Text, nullable=False),
    sa.Column("table_name", sa.Text, nullable=False),
    sa.Column("row_key", sa.Text, nullable=False),
    sa.Column("detail", sa.Text),
    sa.Column("first_seen_at", sa.DateTime, nullable=False),
    sa.Column("last_seen_at", sa.DateTime, nullable=False),
    sa.Column("resolved_at", sa.DateTime),
    sa.Index("ix_exceptions_rule_key", "rule", "row_key"),
)
