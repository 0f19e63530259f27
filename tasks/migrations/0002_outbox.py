"""The email outbox (the `email` task's queue; contract in tasks/outbox.py).

Revision ID: 0002_outbox
Revises: 0001_core
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from cronloop.sql import UTCDateTime

revision = "0002_outbox"
down_revision = "0001_core"
branch_labels = None
depends_on = None

TABLE = "cronloop_outbox"


def _long_text() -> sa.types.TypeEngine:  # type: ignore[type-arg]
    return sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True),
        sa.Column("message_id", sa.String(255)),
        sa.Column("sender", sa.String(320)),
        sa.Column("recipients", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("body_text", _long_text(), nullable=False),
        sa.Column("body_html", _long_text()),
        sa.Column("headers", sa.Text()),
        sa.Column("created", UTCDateTime(), nullable=False),
        sa.Column("planned", UTCDateTime(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, server_default="planned"),
        sa.Column("remaining_retries", sa.Integer()),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text()),
        sa.Column("last_error_code", sa.Integer()),
        sa.Column("last_attempt", UTCDateTime()),
        sa.Column("sent", UTCDateTime()),
        sa.Column("owner", sa.String(255)),
        sa.Column("claim_token", sa.String(36)),
        sa.Column("lease_until", UTCDateTime()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cronloop_outbox")),
        sa.UniqueConstraint("message_id", name=op.f("uq_cronloop_outbox_message_id")),
        sa.CheckConstraint(
            "state IN ('planned', 'sending', 'sent', 'error')",
            name=op.f("ck_cronloop_outbox_state"),
        ),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )
    for columns in (
        ["state", "planned"],
        ["state", "lease_until"],
        ["claim_token"],
        ["state", "sent"],
    ):
        op.create_index(op.f(f"ix_{TABLE}_{'_'.join(columns)}"), TABLE, columns)


def downgrade() -> None:
    op.drop_table(TABLE)
