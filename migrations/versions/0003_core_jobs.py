"""The job queue: one row per queued job (`cronloop_job`).

Revision ID: 0003_core_jobs
Revises: 0002_core_lock
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from cronloop.store.sql.tables import ACTIVE_KEY_SQL, UTCDateTime

revision = "0003_core_jobs"
down_revision = "0002_core_lock"
branch_labels = None
depends_on = None


def _ts(name: str, nullable: bool = True) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, UTCDateTime(), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "cronloop_job",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True),
        sa.Column("kind", sa.String(190), nullable=False),
        sa.Column("args", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, server_default="planned"),
        sa.Column("priority", sa.Integer(), nullable=False, server_default="0"),
        _ts("run_at", nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("max_retries", sa.Integer()),
        sa.Column("unique_key", sa.String(190)),
        sa.Column("active_key", sa.String(190), sa.Computed(ACTIVE_KEY_SQL, persisted=True)),
        sa.Column("owner", sa.String(255)),
        sa.Column("lease_token", sa.String(36)),
        _ts("lease_until"),
        sa.Column("last_error", sa.Text()),
        _ts("created", nullable=False),
        _ts("finished"),
        sa.PrimaryKeyConstraint("id", name="pk_cronloop_job"),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )
    op.create_index(
        "ix_cronloop_job_state_priority_run_at", "cronloop_job", ["state", "priority", "run_at"]
    )
    op.create_index(
        "ix_cronloop_job_kind_active_key", "cronloop_job", ["kind", "active_key"], unique=True
    )
    op.create_index("ix_cronloop_job_state_finished", "cronloop_job", ["state", "finished"])


def downgrade() -> None:
    op.drop_table("cronloop_job")
