"""The lease-row lock table (cluster-wide migration lock).

On MySQL/MariaDB the migration lock creates this table itself, before any migration runs
(`CREATE TABLE IF NOT EXISTS`: idempotent, and ordered cluster-wide under Galera's total
order isolation); this revision records it, and creates it where the lock did not (the
embedded SQLite file migrates under a file lock instead).

Revision ID: 0002_core_lock
Revises: 0001_core
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op
from sqlalchemy.schema import CreateTable

from cronloop.store.sql.tables import locks

revision = "0002_core_lock"
down_revision = "0001_core"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(CreateTable(locks, if_not_exists=True))


def downgrade() -> None:
    op.drop_table("cronloop_lock")
