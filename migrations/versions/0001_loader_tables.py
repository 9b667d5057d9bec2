"""The loader's own tables: history, state, registry, rejects and exceptions.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "loader_runs",
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
    op.create_table(
        "loader_task_runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("loader_runs.run_id"), nullable=False),
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
    op.create_index("ix_loader_task_runs_run_id", "loader_task_runs", ["run_id"])
    op.create_table(
        "loader_watermarks",
        sa.Column("processor", sa.Text, primary_key=True),
        sa.Column("input", sa.Text, primary_key=True),
        sa.Column("watermark", sa.DateTime, nullable=False),
        sa.Column("version", sa.Text, nullable=False, server_default=""),
    )
    op.create_table(
        "loader_locks",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("holder", sa.Text, nullable=False),
        sa.Column("run_id", sa.Integer),
        sa.Column("acquired_at", sa.DateTime, nullable=False),
        sa.Column("heartbeat_at", sa.DateTime, nullable=False),
        sa.Column("expires_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "loader_schema_history",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("table_name", sa.Text, nullable=False),
        sa.Column("change", sa.Text, nullable=False),
        sa.Column("column_name", sa.Text),
        sa.Column("column_type", sa.Text),
        sa.Column("reason", sa.Text),
        sa.Column("run_id", sa.Integer),
        sa.Column("changed_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "loader_tables",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("columns", sa.Text, nullable=False),
    )
    op.create_table(
        "loader_sources",
        sa.Column("processor", sa.Text, primary_key=True),
        sa.Column("source", sa.Text, primary_key=True),
        sa.Column("partition", sa.Text),
        sa.Column("content_hash", sa.Text, nullable=False),
        sa.Column("header", sa.Text),
        sa.Column("run_id", sa.Integer),
        sa.Column("loaded_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "rejects",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("line", sa.Integer, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("raw", sa.Text, nullable=False),
        sa.Column("run_id", sa.Integer),
        sa.Column("rejected_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_rejects_source", "rejects", ["source"])
    op.create_table(
        "exceptions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("rule", sa.Text, nullable=False),
        sa.Column("table_name", sa.Text, nullable=False),
        sa.Column("row_key", sa.Text, nullable=False),
        sa.Column("detail", sa.Text),
        sa.Column("first_seen_at", sa.DateTime, nullable=False),
        sa.Column("last_seen_at", sa.DateTime, nullable=False),
        sa.Column("resolved_at", sa.DateTime),
    )
    op.create_index("ix_exceptions_rule_key", "exceptions", ["rule", "row_key"])


def downgrade() -> None:
    for table in ("exceptions", "rejects", "loader_sources", "loader_tables",
                  "loader_schema_history", "loader_locks", "loader_watermarks",
                  "loader_task_runs", "loader_runs"):
        op.drop_table(table)
