"""dialogue sessions: when the question she has not answered times out

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 02:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dialogue_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("timeout_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_dialogue_sessions_timeout_at"), ["timeout_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("dialogue_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dialogue_sessions_timeout_at"))
        batch_op.drop_column("timeout_at")
