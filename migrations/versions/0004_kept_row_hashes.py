"""The row hashes of a CSV partition's live rows, kept with the load that left them, so
that the next reload of the file need not read them from the table.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("loader_sources") as batch:
        batch.add_column(sa.Column("row_hashes", sa.LargeBinary))


def downgrade() -> None:
    with op.batch_alter_table("loader_sources") as batch:
        batch.drop_column("row_hashes")
