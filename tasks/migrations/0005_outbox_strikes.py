"""The outbox claimed as a queue table: `cronloop_outbox.strikes`.

The outbox is now claimed by cronloop's one claim of queued work (`cronloop.sql.
acquire_queued`, the job queue's): a claim takes over rows whose lease expired and
counts a strike against each; `quarantine_strikes` of them make the row `error`. Every
existing row keeps its state, lease, attempts and content: `planned`, `sending` (its
lease still fences its sender; once expired, the next claim takes it over), `sent` and
`error` rows need nothing but the new counter, which starts at 0.

Revision ID: 0005_outbox_strikes
Revises: 0002_outbox
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_outbox_strikes"
down_revision = "0002_outbox"
branch_labels = None
depends_on = None

TABLE = "cronloop_outbox"


def upgrade() -> None:
    op.add_column(TABLE, sa.Column("strikes", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table(TABLE) as batch:
        batch.drop_column("strikes")
