"""The size of each loaded source file, so that a reload knows a file of another size
has changed before it has read the whole file.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("loader_sources") as batch:
        batch.add_column(sa.Column("size", sa.BigInteger))


def downgrade() -> None:
    with op.batch_alter_table("loader_sources") as batch:
        batch.drop_column("size")
