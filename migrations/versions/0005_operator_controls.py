"""What the operator's command line changes in a running bot, and what statistics read.

- users.banned_until: a ban with a duration ends then (NULL: until an unban).
- jobs.cancel_requested: a running job someone asked to stop, from any process.
- jobs.gpu_seconds: the job's share of its batch's time on the GPU.
- queue_state.revision: bumped by every change a running bot must act on (it polls it).
- queue_state.model: the checkpoint chosen with `easel models use` (NULL: the configured one).
- queue_state.sources_revision: bumped by `easel presets reload`.
- The control row itself (id 1), created here once rather than by whichever process first
  changes something.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("banned_until", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("gpu_seconds", sa.Float(), nullable=True))
        batch.create_index("ix_jobs_created_at", ["created_at"])
    with op.batch_alter_table("queue_state") as batch:
        batch.add_column(sa.Column("revision", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("model", sa.String(length=255), nullable=True))
        batch.add_column(
            sa.Column("sources_revision", sa.Integer(), nullable=False, server_default="0")
        )
    _create_control_row()


def _create_control_row() -> None:
    """The one control row exists from now on, so no two processes race to insert it."""
    queue_state = sa.table(
        "queue_state",
        sa.column("id", sa.Integer()),
        sa.column("paused", sa.Boolean()),
        sa.column("revision", sa.Integer()),
        sa.column("sources_revision", sa.Integer()),
    )
    bind = op.get_bind()
    exists = bind.execute(sa.select(queue_state.c.id).where(queue_state.c.id == 1)).first()
    if exists is None:
        op.bulk_insert(
            queue_state, [{"id": 1, "paused": False, "revision": 0, "sources_revision": 0}]
        )


def downgrade() -> None:
    with op.batch_alter_table("queue_state") as batch:
        batch.drop_column("sources_revision")
        batch.drop_column("model")
        batch.drop_column("revision")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_created_at")
        batch.drop_column("gpu_seconds")
        batch.drop_column("cancel_requested")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("banned_until")
