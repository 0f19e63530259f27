"""What kind of failure a database exception is, from the drivers' own codes and types.

This module owns the driver knowledge: MariaDB/MySQL error numbers (through aiomysql and
PyMySQL), sqlite3's messages, SQLAlchemy's wrappers. It answers one question, `classify`,
with one of the four kinds of `cronloop.store.errors` (the SQL store's `classify_error`);
what to do about each kind (retry now, back off, record a placeholder, crash) is the
runtime's database-health policy, which never sees a driver. It never logs, retries or
sleeps.
"""

from __future__ import annotations

import sqlite3

import pymysql.err  # type: ignore[import-untyped]  # no stubs installed
from sqlalchemy import exc as sa_exc

from cronloop.store.errors import CONFLICT_JITTER_S, CONFLICT_RETRIES, ErrorKind

__all__ = [
    "CONFLICT_JITTER_S",
    "CONFLICT_RETRIES",
    "ErrorKind",
    "classify",
    "code_of",
]

# MariaDB / MySQL server error numbers
CONFLICT_CODES = frozenset(
    {
        1213,  # ER_LOCK_DEADLOCK; also Galera's certification failure (wsrep abort)
        1205,  # ER_LOCK_WAIT_TIMEOUT
        1614,  # ER_XA_RBDEADLOCK
        1637,  # ER_TOO_MANY_CONCURRENT_TRXS
        4010,  # MariaDB wsrep: "Deadlock: wsrep aborted transaction"
    }
)
OUTAGE_CODES = frozenset(
    {
        1040,  # ER_CON_COUNT_ERROR: too many connections
        1047,  # ER_UNKNOWN_COM_ERROR: "WSREP has not yet prepared node for application use"
        1053,  # ER_SERVER_SHUTDOWN
        1077,  # ER_NORMAL_SHUTDOWN
        1078,  # ER_GOT_SIGNAL
        1079,  # ER_SHUTDOWN_COMPLETE
        1152,  # ER_ABORTING_CONNECTION
        # ER_ERROR_DURING_COMMIT: seen on a Galera node that just left the primary
        # component ("Error while appending streaming replication fragment (provider
        # status: Not connected to Primary Component)"); a commit the server could not
        # do now, not our SQL: retried later, never a crash
        1180,
        1158,  # ER_NET_READ_ERROR
        1159,  # ER_NET_READ_INTERRUPTED
        1160,  # ER_NET_ERROR_ON_WRITE
        1161,  # ER_NET_WRITE_INTERRUPTED
        1290,  # ER_OPTION_PREVENTS_STATEMENT: a --read-only server (failover in progress)
        1317,  # ER_QUERY_INTERRUPTED (KILL QUERY, shutdown)
        1836,  # ER_READ_ONLY_MODE
        1927,  # ER_CONNECTION_KILLED
        4031,  # ER_CLIENT_INTERACTION_TIMEOUT
    }
)
REFUSED_CODES = frozenset(
    {
        1048,  # ER_BAD_NULL_ERROR
        1062,  # ER_DUP_ENTRY
        1264,  # ER_WARN_DATA_OUT_OF_RANGE
        1265,  # WARN_DATA_TRUNCATED
        1292,  # ER_TRUNCATED_WRONG_VALUE
        1364,  # ER_NO_DEFAULT_FOR_FIELD
        1366,  # ER_TRUNCATED_WRONG_VALUE_FOR_FIELD: incorrect string value (encoding)
        1367,  # ER_ILLEGAL_VALUE_FOR_TYPE
        1406,  # ER_DATA_TOO_LONG
        1451,  # ER_ROW_IS_REFERENCED_2
        1452,  # ER_NO_REFERENCED_ROW_2
        3819,  # ER_CHECK_CONSTRAINT_VIOLATED (MySQL)
        4025,  # ER_CONSTRAINT_FAILED (MariaDB)
    }
)
# The node answered, but cannot serve: with several hosts (`database_hosts`) the
# connection moves to the next one (`store.sql.hosts`); still an OUTAGE to the runtime.
NODE_UNUSABLE_CODES = frozenset(
    {
        1047,  # wsrep: "WSREP has not yet prepared node for application use" (non-primary)
        1053,  # ER_SERVER_SHUTDOWN
        1290,  # ER_OPTION_PREVENTS_STATEMENT: --read-only
        1836,  # ER_READ_ONLY_MODE
    }
)
# client-side errors (CR_*: 2002 can't connect via socket, 2003 can't connect, 2006 gone
# away, 2013 lost connection, 2055 lost at handshake, ...): always the connection
CLIENT_CODES = range(2000, 3000)

_SQLITE_CONFLICT = ("database is locked", "database table is locked", "database is busy")
_SQLITE_OUTAGE = (
    "disk i/o error",
    "unable to open database",
    "database or disk is full",
    "readonly database",
    "no connection",  # aiosqlite: used after close
)


def classify(exc: BaseException) -> ErrorKind:
    """The kind of failure `exc` is. Unknown exceptions are bugs: nothing is retried
    that is not known to be worth retrying."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return ErrorKind.OUTAGE
    if isinstance(exc, sa_exc.DisconnectionError | sa_exc.TimeoutError):
        return ErrorKind.OUTAGE  # SQLAlchemy's own: a dead connection, the pool exhausted
    cause = _driver_error(exc)
    if isinstance(cause, pymysql.err.MySQLError):
        return _mysql(cause)
    if isinstance(cause, sqlite3.Error):
        return _sqlite(cause)
    if isinstance(cause, UnicodeError | OverflowError):
        return ErrorKind.REFUSED  # a value the driver cannot bind (a lone surrogate ...)
    if isinstance(cause, TimeoutError | ConnectionError | OSError | EOFError):
        return ErrorKind.OUTAGE  # our own bound on a call, a reset, a refused connect
    return ErrorKind.BUG


def node_unusable(exc: BaseException) -> bool:
    """Whether `exc` says the server it came from cannot serve now, though it answers (a
    Galera node outside the primary component, a server shutting down or read-only): an
    outage of that node, which another node of a cluster may not share."""
    code = code_of(exc)
    if code == 1180:  # a failed commit: the node's fault only when Galera says so
        return "primary component" in str(_driver_error(exc)).lower()
    return code in NODE_UNUSABLE_CODES


def code_of(exc: BaseException) -> int | None:
    """The MariaDB/MySQL error number behind `exc`, if there is one."""
    cause = _driver_error(exc)
    if isinstance(cause, pymysql.err.MySQLError) and cause.args:
        first = cause.args[0]
        return first if isinstance(first, int) else None
    return None


def _driver_error(exc: BaseException) -> BaseException:
    """The driver's exception under SQLAlchemy's wrappers (`.orig`) or a `raise from`."""
    seen: set[int] = set()
    current = exc
    while id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sa_exc.StatementError) and current.orig is not None:
            current = current.orig
        elif isinstance(current, sa_exc.SQLAlchemyError) and current.__cause__ is not None:
            current = current.__cause__
        else:
            break
    return current


def _mysql(exc: pymysql.err.MySQLError) -> ErrorKind:
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    if code in CONFLICT_CODES:
        return ErrorKind.CONFLICT
    if code in OUTAGE_CODES or (code is not None and code in CLIENT_CODES):
        return ErrorKind.OUTAGE
    if code in REFUSED_CODES or isinstance(exc, pymysql.err.DataError | pymysql.err.IntegrityError):
        return ErrorKind.REFUSED
    if isinstance(exc, pymysql.err.InterfaceError):
        return ErrorKind.OUTAGE  # PyMySQL's "(0, '')": the connection is already closed
    return ErrorKind.BUG


def _sqlite(exc: sqlite3.Error) -> ErrorKind:
    text = str(exc).lower()
    if isinstance(exc, sqlite3.OperationalError) and any(m in text for m in _SQLITE_CONFLICT):
        return ErrorKind.CONFLICT
    if isinstance(exc, sqlite3.OperationalError | sqlite3.InterfaceError) and any(
        m in text for m in _SQLITE_OUTAGE
    ):
        return ErrorKind.OUTAGE
    if isinstance(exc, sqlite3.DataError | sqlite3.IntegrityError):
        return ErrorKind.REFUSED
    return ErrorKind.BUG
