"""Jobs run by GPU workers on other machines (scale-out: Celery with a Redis broker).

- jobs.run_id: the id of the job's current run (the Celery task id), set when its batch is
  dispatched; a result that names another run is one someone else already dealt with.
- jobs.worker: the worker that claimed the run.
- jobs.lease_until: the worker holds the job until then, renewing as it goes; past it, the
  run counts as lost and the job may be queued again.
- An index on (status, lease_until): the bot's look for expired leases.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("run_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("worker", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_jobs_status_lease_until", ["status", "lease_until"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_status_lease_until")
        batch.drop_column("lease_until")
        batch.drop_column("worker")
        batch.drop_column("run_id")
