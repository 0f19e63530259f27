"""The tables cronloop owns. The schema changes only through `migrations/`.

Table names carry a `cronloop_` prefix because the service usually shares a database
with the application it serves (iTop already has a `priv_backgroundtask`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Computed,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)
from sqlalchemy.dialects import mysql

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

VERSION_TABLE = "cronloop_alembic_version"


class UTCDateTime(TypeDecorator[datetime]):
    """A UTC instant with microseconds; refuses naive datetimes.

    iTop stores naive local times, which are ambiguous for an hour every autumn. Here the
    database holds naive UTC (`DATETIME(6)` on MySQL: microseconds, no server time-zone
    conversion) and Python only ever sees aware UTC values.
    """

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: cronloop stores UTC instants only")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # SQLite: a value written by the DB clock expression
            value = datetime.fromisoformat(value)
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


def _ts(name: str, **kw: Any) -> Column[Any]:
    return Column(name, UTCDateTime(), **kw)


tasks = Table(
    "cronloop_task",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(190), nullable=False, unique=True),
    Column("status", String(16), nullable=False, server_default="active"),
    Column("status_reason", Text),  # why disabled or quarantined
    Column("schedule", String(255), nullable=False, server_default=""),
    Column("timeout_s", Float),
    # when to run next (a trigger or a retry may bring it before planned_run)
    _ts("next_run"),
    # the schedule's own slot: periodic runs are computed from it, so triggers, retries
    # and late finishes never shift the phase (iTop's no-drift rule)
    _ts("planned_run"),
    _ts("first_run"),
    _ts("latest_run_start"),
    _ts("latest_run_end"),
    Column("run_count", Integer, nullable=False, server_default="0"),
    Column("latest_duration_s", Float),
    Column("min_duration_s", Float),
    Column("max_duration_s", Float),
    Column("avg_duration_s", Float),  # running mean over run_count
    Column("consecutive_failures", Integer, nullable=False, server_default="0"),
    Column("consecutive_timeouts", Integer, nullable=False, server_default="0"),
    Column("strikes", Integer, nullable=False, server_default="0"),
    Column("last_outcome", String(16)),
    Column("last_message", Text),
    Column("last_error", Text),
    Column("last_user", String(64)),
    Column("last_host", String(255)),
    # the claim: who runs it now, until when (database clock), and the fencing token
    Column("owner", String(255)),
    Column("lease_token", String(36)),
    _ts("lease_until"),
    Column("run_id", String(36)),
    _ts("run_scheduled_for"),
    _ts("created", nullable=False),
    _ts("updated", nullable=False),
    Index(None, "status", "next_run"),
)

runs = Table(
    "cronloop_run",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("run_id", String(36), nullable=False, unique=True),
    Column("task_name", String(190), nullable=False),
    _ts("scheduled_for", nullable=False),
    _ts("started", nullable=False),
    _ts("ended"),
    Column("duration_s", Float),
    Column("outcome", String(16), nullable=False),
    Column("message", Text),
    Column("error", Text),
    Column("worker", String(255), nullable=False),
    Column("missed", Integer, nullable=False, server_default="0"),
    Column("triggered", Boolean, nullable=False, server_default="0"),
    Index(None, "task_name", "started"),
    Index(None, "started"),
)

# cluster-wide locks (the migration lock): a lease row per lock, taken by a conditional
# UPDATE on the database clock; GET_LOCK is not cluster-wide on Galera
locks = Table(
    "cronloop_lock",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(255)),  # who holds it (host:pid), for the operator
    Column("token", String(36)),  # the holder's fencing token; NULL: free
    _ts("until"),  # the lease's end, database clock
)

# the unique key while the job is planned or running, else NULL: a unique index over
# (kind, active_key) makes "one waiting job per key" hold on SQLite and MariaDB alike
# (both allow many NULLs in a unique index), for rows inserted by any code
ACTIVE_KEY_SQL = "CASE WHEN state IN ('planned', 'running') THEN unique_key END"

jobs = Table(
    "cronloop_job",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("kind", String(190), nullable=False),
    Column("args", Text, nullable=False),  # a JSON object: the handler's keyword arguments
    Column("state", String(16), nullable=False, server_default="planned"),
    Column("priority", Integer, nullable=False, server_default="0"),  # higher runs first
    _ts("run_at", nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    # attempts whose worker was lost (counted at each takeover): quarantine_strikes
    Column("strikes", Integer, nullable=False, server_default="0"),
    Column("max_retries", Integer),  # None: the kind's setting
    Column("unique_key", String(190)),
    Column("active_key", String(190), Computed(ACTIVE_KEY_SQL, persisted=True)),
    Column("owner", String(255)),
    Column("lease_token", String(36)),
    _ts("lease_until"),
    Column("last_error", Text),
    _ts("created", nullable=False),
    _ts("finished"),
    Index(None, "state", "priority", "run_at"),
    Index(None, "kind", "active_key", unique=True),
    Index(None, "state", "finished"),  # pruning
)
