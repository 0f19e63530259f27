"""Alembic environment for cronloop's own tables.

cronloop runs migrations from code (`cronloop migrate`, or by itself on the embedded
SQLite file) and passes its connection in `config.attributes["connection"]`; the plain
`alembic` command also works for developers, given `-x url=...`. The target metadata is
the core's tables plus each installed plugin's (`Plugin.metadata`); it never imports a
plugin by name.
"""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import create_engine

from cronloop.definitions.plugin import load_plugins, plugin_metadata
from cronloop.store.sql.tables import VERSION_TABLE, metadata


def _configure(connection: Any) -> None:
    context.configure(
        connection=connection,
        target_metadata=[metadata, *plugin_metadata(load_plugins())],
        version_table=VERSION_TABLE,
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies tables
        compare_type=True,
        compare_server_default=True,
        include_name=lambda name, type_, parent: (
            type_ != "table" or (name or "").startswith("cronloop_")
        ),
    )


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("give the database with: alembic -x url=mysql+pymysql://... upgrade head")
    engine = create_engine(url)
    with engine.connect() as conn:
        _configure(conn)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) mode is not supported; run `cronloop migrate`")
run_migrations_online()
