"""Draft attachments / inline images and bulk-export results (the clean-up tasks' tables).

Revision ID: 0004_attachments
Revises: 0001_core
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from cronloop.sql import UTCDateTime

revision = "0004_attachments"
down_revision = "0001_core"
branch_labels = None
depends_on = None


def _id() -> sa.Column:  # type: ignore[type-arg]
    return sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True)


def upgrade() -> None:
    op.create_table(
        "cronloop_draft_attachment",
        _id(),
        sa.Column("object_class", sa.String(100)),
        sa.Column("object_id", sa.BigInteger()),
        sa.Column("kind", sa.String(16), nullable=False, server_default="attachment"),
        sa.Column("temp_id", sa.String(64)),
        sa.Column("file_name", sa.String(255)),
        sa.Column("file_path", sa.String(1024)),
        sa.Column("contents", sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")),
        sa.Column(
            "mime_type",
            sa.String(255),
            nullable=False,
            server_default="application/octet-stream",
        ),
        sa.Column("size", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("created", UTCDateTime(), nullable=False),
        sa.Column("expire", UTCDateTime()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cronloop_draft_attachment")),
        sa.CheckConstraint(
            "kind IN ('attachment', 'inline_image')",
            name=op.f("ck_cronloop_draft_attachment_kind"),
        ),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )
    op.create_index(
        op.f("ix_cronloop_draft_attachment_object_id_expire_created"),
        "cronloop_draft_attachment",
        ["object_id", "expire", "created"],
    )
    op.create_index(
        op.f("ix_cronloop_draft_attachment_object_class_object_id"),
        "cronloop_draft_attachment",
        ["object_class", "object_id"],
    )
    op.create_index(
        op.f("ix_cronloop_draft_attachment_temp_id"), "cronloop_draft_attachment", ["temp_id"]
    )
    op.create_table(
        "cronloop_export_result",
        _id(),
        sa.Column("token", sa.String(64), nullable=False),
        sa.Column("created", UTCDateTime(), nullable=False),
        sa.Column("file_path", sa.String(1024)),
        sa.Column("size", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("status", sa.String(16), nullable=False, server_default="running"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cronloop_export_result")),
        sa.UniqueConstraint("token", name=op.f("uq_cronloop_export_result_token")),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )
    op.create_index(
        op.f("ix_cronloop_export_result_created"), "cronloop_export_result", ["created"]
    )


def downgrade() -> None:
    op.drop_table("cronloop_export_result")
    op.drop_table("cronloop_draft_attachment")
