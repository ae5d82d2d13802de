"""idempotency keys remember what request they were used for

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 01:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("idempotency_key") as batch:  # batch: SQLite alters by copying
        batch.add_column(sa.Column("request_sha256", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("idempotency_key") as batch:
        batch.drop_column("request_sha256")
