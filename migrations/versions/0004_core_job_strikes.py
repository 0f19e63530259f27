"""Job quarantine: `cronloop_job.strikes`, the attempts whose worker was lost.

Revision ID: 0004_core_job_strikes
Revises: 0003_core_jobs
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_core_job_strikes"
down_revision = "0003_core_jobs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # existing rows start with no strike; the state `quarantined` needs no DDL
    op.add_column(
        "cronloop_job", sa.Column("strikes", sa.Integer(), nullable=False, server_default="0")
    )


def downgrade() -> None:
    op.execute("UPDATE cronloop_job SET state = 'error' WHERE state = 'quarantined'")
    with op.batch_alter_table("cronloop_job") as batch:
        batch.drop_column("strikes")
