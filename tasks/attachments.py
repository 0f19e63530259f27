"""Tables the application writes and the clean-up tasks empty (contract with the app).

`cronloop_draft_attachment` holds what iTop calls draft attachments and inline images:
files uploaded while an object is being edited. The application inserts a row at upload
time with `object_id` NULL and `expire` = upload + its `draft_attachments_lifetime`; when
the object is saved it sets `object_class`/`object_id` (the row is then "linked" and never
touched by cronloop). If the edit is cancelled the row stays unlinked, and
`draft_attachment_gc` deletes it, and its stored file, once `expire` has passed.

The file lives either in the database (`contents`) or on disk (`file_path`, absolute or
relative to the task's `files_root` option); cronloop deletes files only inside
`files_root`.

`cronloop_export_result` holds bulk-export results (iTop's BulkExportResult): the
application writes one row per export with the temporary file it produced;
`bulk_export_gc` deletes rows older than `max_age_s` and their files.

Every timestamp is a UTC instant (`UTCDateTime`: naive datetimes are refused).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, Column, Index, LargeBinary, String, Table
from sqlalchemy.dialects import mysql

from cronloop.sql import UTCDateTime, id_column
from cronloop.standard.schema import metadata

KIND_ATTACHMENT = "attachment"
KIND_INLINE_IMAGE = "inline_image"


def contents_type() -> Any:
    """LONGBLOB on MySQL: a plain BLOB stops at 64 KiB, too small for an attachment."""
    return LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")


draft_attachments = Table(
    "cronloop_draft_attachment",
    metadata,
    id_column(),
    # NULL object_id = not linked to any object (a draft); the GC deletes only those
    Column("object_class", String(100)),
    Column("object_id", BigInteger),
    Column("kind", String(16), nullable=False, server_default=KIND_ATTACHMENT),
    Column("temp_id", String(64)),  # the edit form's token, for the app to find its drafts
    Column("file_name", String(255)),  # name as uploaded, for display
    Column("file_path", String(1024)),  # stored file, NULL when `contents` holds the data
    Column("contents", contents_type()),
    Column("mime_type", String(255), nullable=False, server_default="application/octet-stream"),
    Column("size", BigInteger, nullable=False, server_default="0"),
    Column("created", UTCDateTime(), nullable=False),
    # upload + draft_attachments_lifetime; NULL = created + the task's lifetime_s
    Column("expire", UTCDateTime()),
    CheckConstraint(f"kind IN ('{KIND_ATTACHMENT}', '{KIND_INLINE_IMAGE}')", name="kind"),
    # the GC's two range scans: (NULL, expire < now) and (NULL, NULL, created < cutoff)
    Index(None, "object_id", "expire", "created"),
    Index(None, "object_class", "object_id"),
    Index(None, "temp_id"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

export_results = Table(
    "cronloop_export_result",
    metadata,
    id_column(),
    Column("token", String(64), nullable=False, unique=True),
    Column("created", UTCDateTime(), nullable=False),
    Column("file_path", String(1024)),  # the temporary result file, if any
    Column("size", BigInteger, nullable=False, server_default="0"),
    Column("status", String(16), nullable=False, server_default="running"),
    Index(None, "created"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)
