"""Values computed over a whole table (a validation check's totals), remembered until
the table is next written to; on PostgreSQL, the counter of writes that tells.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "loader_table_facts",
        sa.Column("table_name", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("trigger_oid", sa.BigInteger, nullable=False),
        sa.Column("writes", sa.BigInteger, nullable=False),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("run_id", sa.Integer),
        sa.Column("computed_at", sa.DateTime, nullable=False),
    )
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        # The function names its sequence with the schema it is created in, so that a
        # write from a session with another search_path counts too.
        schema = bind.exec_driver_sql("SELECT current_schema()").scalar_one()
        sequence = f"{_quote(schema)}.loader_write_count"
        op.execute(f"CREATE SEQUENCE {sequence}")
        op.execute(f"""
            CREATE FUNCTION {_quote(schema)}.loader_count_write() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM nextval('{sequence.replace("'", "''")}');
                RETURN NULL;
            END
            $$""")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION loader_count_write() CASCADE")
        op.execute("DROP SEQUENCE loader_write_count")
    op.drop_table("loader_table_facts")


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
