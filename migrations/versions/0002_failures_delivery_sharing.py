"""Failure traces, delivery attempts, job costs, shared chats, face and composition settings.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("failure_trace", sa.Text(), nullable=True))
        batch.add_column(
            sa.Column("delivery_attempts", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("cost", sa.Float(), nullable=False, server_default="1"))
    with op.batch_alter_table("chats") as batch:
        batch.add_column(
            sa.Column("shared_results", sa.Boolean(), nullable=False, server_default=sa.true())
        )

    with op.batch_alter_table("user_settings") as batch:
        batch.add_column(sa.Column("face", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("composition", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("user_settings") as batch:
        batch.drop_column("composition")
        batch.drop_column("face")
    with op.batch_alter_table("chats") as batch:
        batch.drop_column("shared_results")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("cost")
        batch.drop_column("delivery_attempts")
        batch.drop_column("failure_trace")
