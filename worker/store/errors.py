"""The kinds of database failure every store reports, and the one answer to a conflict.

Each store implementation knows its drivers' codes and answers `Store.classify_error`
with one of these kinds (the SQL store: `cronloop.store.sql.errors`); what to do about
each kind (retry now, back off, record a placeholder, crash) is the runtime's
database-health policy, which never sees a driver. Nothing here logs, retries or sleeps.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorKind(StrEnum):
    """The four kinds of database failure; the values are metric labels."""

    CONFLICT = "conflict"  # a lost race: retry the whole transaction at once
    OUTAGE = "outage"  # the database cannot be reached or cannot serve now
    REFUSED = "refused"  # the database refused this data: retrying it cannot help
    BUG = "bug"  # our SQL or our code is wrong: fail loudly


# The one answer to a conflict, for every caller (the runtime's DbHealth, and
# `store.sql.retry` for everything else): the whole transaction again at once, with a
# little jitter, this many times before the caller hears of it.
CONFLICT_RETRIES = 5
CONFLICT_JITTER_S = 0.005  # up to this much per attempt, so racing writers fall apart
