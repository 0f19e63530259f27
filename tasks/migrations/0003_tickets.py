"""The ticket table with its SLA stopwatches (TTO, TTR), watched by the `sla` task.

Revision ID: 0003_tickets
Revises: 0001_core
Create Date: 2026-11-26

The columns are written out here rather than taken from `tasks.tickets`, so that this
revision keeps creating the same table when the model changes later.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from cronloop.sql import UTCDateTime

revision = "0003_tickets"
down_revision = "0001_core"
branch_labels = None
depends_on = None

STOPWATCHES = ("tto", "ttr")
THRESHOLDS = (75, 100)


def _stopwatch(sw: str) -> list[sa.Column]:  # type: ignore[type-arg]
    columns: list[sa.Column] = [  # type: ignore[type-arg]
        sa.Column(f"{sw}_state", sa.String(16), nullable=False, server_default="stopped"),
        sa.Column(f"{sw}_started", UTCDateTime(), nullable=True),
        sa.Column(f"{sw}_goal_s", sa.Float(), nullable=True),
    ]
    for pct in THRESHOLDS:
        columns += [
            sa.Column(f"{sw}_{pct}_deadline", UTCDateTime(), nullable=True),
            sa.Column(f"{sw}_{pct}_triggered", sa.Boolean(), nullable=False, server_default="0"),
            sa.Column(f"{sw}_{pct}_overrun", sa.Float(), nullable=True),
        ]
    return columns


def upgrade() -> None:
    op.create_table(
        "cronloop_ticket",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("ref", sa.String(64), nullable=False),
        sa.Column("title", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="new"),
        sa.Column("priority", sa.SmallInteger(), nullable=False, server_default="4"),
        sa.Column("team_email", sa.String(254), nullable=False),
        sa.Column("agent_email", sa.String(254), nullable=True),
        sa.Column("created", UTCDateTime(), nullable=False),
        *_stopwatch("tto"),
        *_stopwatch("ttr"),
        sa.Column("sla_error", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_cronloop_ticket"),
        sa.UniqueConstraint("ref", name="uq_cronloop_ticket_ref"),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )
    for sw in STOPWATCHES:
        for pct in THRESHOLDS:
            op.create_index(
                f"ix_cronloop_ticket_{sw}_{pct}_due",
                "cronloop_ticket",
                [f"{sw}_state", f"{sw}_{pct}_triggered", "sla_error", f"{sw}_{pct}_deadline"],
            )


def downgrade() -> None:
    op.drop_table("cronloop_ticket")
