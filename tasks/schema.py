"""The tables the standard tasks own, documented as the contract the application writes
into (outbox, tickets, draft attachments, export results).

One MetaData for all of `tasks/`, so Alembic (`migrations/env.py`) sees every table and
the schema test can compare the migrated database with the models.
"""

from __future__ import annotations

from sqlalchemy import MetaData

from cronloop.sql import NAMING_CONVENTION

metadata = MetaData(naming_convention=NAMING_CONVENTION)
