"""The task table and the run history.

Revision ID: 0001_core
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from cronloop.store.sql.tables import UTCDateTime

revision = "0001_core"
down_revision = None
branch_labels = None
depends_on = None


def _ts(name: str, nullable: bool = True) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, UTCDateTime(), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "cronloop_task",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(190), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="active"),
        sa.Column("status_reason", sa.Text()),
        sa.Column("schedule", sa.String(255), nullable=False, server_default=""),
        sa.Column("timeout_s", sa.Float()),
        _ts("next_run"),
        _ts("planned_run"),
        _ts("first_run"),
        _ts("latest_run_start"),
        _ts("latest_run_end"),
        sa.Column("run_count", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("latest_duration_s", sa.Float()),
        sa.Column("min_duration_s", sa.Float()),
        sa.Column("max_duration_s", sa.Float()),
        sa.Column("avg_duration_s", sa.Float()),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("consecutive_timeouts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("strikes", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_outcome", sa.String(16)),
        sa.Column("last_message", sa.Text()),
        sa.Column("last_error", sa.Text()),
        sa.Column("last_user", sa.String(64)),
        sa.Column("last_host", sa.String(255)),
        sa.Column("owner", sa.String(255)),
        sa.Column("lease_token", sa.String(36)),
        _ts("lease_until"),
        sa.Column("run_id", sa.String(36)),
        _ts("run_scheduled_for"),
        _ts("created", nullable=False),
        _ts("updated", nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_cronloop_task"),
        sa.UniqueConstraint("name", name="uq_cronloop_task_name"),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )
    op.create_index("ix_cronloop_task_status_next_run", "cronloop_task", ["status", "next_run"])
    op.create_table(
        "cronloop_run",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("task_name", sa.String(190), nullable=False),
        _ts("scheduled_for", nullable=False),
        _ts("started", nullable=False),
        _ts("ended"),
        sa.Column("duration_s", sa.Float()),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("message", sa.Text()),
        sa.Column("error", sa.Text()),
        sa.Column("worker", sa.String(255), nullable=False),
        sa.Column("missed", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("triggered", sa.Boolean(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("id", name="pk_cronloop_run"),
        sa.UniqueConstraint("run_id", name="uq_cronloop_run_run_id"),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )
    op.create_index("ix_cronloop_run_task_name_started", "cronloop_run", ["task_name", "started"])
    op.create_index("ix_cronloop_run_started", "cronloop_run", ["started"])


def downgrade() -> None:
    op.drop_table("cronloop_run")
    op.drop_table("cronloop_task")
