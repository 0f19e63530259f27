"""Recording many ended runs in one statement per table.

A worker that runs thousands of short tasks a second cannot afford a transaction per run:
the round trips and SQLAlchemy's per-statement work would cost more than the tasks. The
runs that end in the same moment are written together: one UPDATE of the task rows and
one of the history rows, each `SET col = CASE key WHEN ? THEN ? ... END`, the same SQL on
SQLite and MySQL/MariaDB. The statement is built as a string with driver parameters (a
SQLAlchemy construct with thousands of parameters would cost more to compile than to run),
and the values go through the columns' own bind processors, so they are stored exactly as
the ORM-free single-row path stores them.

The task row's new values come from `cronloop.store.rows` (shared with the in-memory
store), computed from what the claim read: the lease makes the row this worker's until the
run is recorded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Column, Dialect, Table

# one statement carries at most this many rows: SQLite allows 32,766 parameters, MySQL 65,535
MAX_BATCH = 200


_SAFE_TEXT = re.compile(r"[0-9A-Za-z_-]{1,64}")


def _inline(value: Any) -> str:
    """A key or token as a SQL literal: escaping thousands of parameters was the largest
    cost of recording a batch. Only integers and short [0-9A-Za-z_-] texts (row ids, run
    ids, lease tokens: all made by cronloop) are accepted; anything else is refused
    rather than escaped here."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and _SAFE_TEXT.fullmatch(value):
        return f"'{value}'"
    raise ValueError(f"not a key cronloop makes: {value!r}")


class _RawSql:
    """SQL text with driver parameters, values processed as the columns' types do."""

    def __init__(self, table: Table, dialect: Dialect) -> None:
        self.table = table
        self.dialect = dialect
        self.quote = dialect.identifier_preparer.quote
        self.mark = "?" if dialect.paramstyle == "qmark" else "%s"
        self._processors: dict[str, Any] = {}

    def _process(self, name: str, value: Any) -> Any:
        if name not in self._processors:
            column: Column[Any] = self.table.c[name]
            self._processors[name] = column.type._cached_bind_processor(self.dialect)
        processor = self._processors[name]
        return value if processor is None or value is None else processor(value)


class MultiInsert(_RawSql):
    """`INSERT INTO table (cols) VALUES (...), (...)`: one statement for many rows."""

    def build(self, rows: Sequence[Mapping[str, Any]]) -> tuple[str, list[Any]]:
        names = list(rows[0])
        row_sql = "(" + ", ".join([self.mark] * len(names)) + ")"
        params = [self._process(name, row[name]) for row in rows for name in names]
        columns = ", ".join(self.quote(name) for name in names)
        values = ", ".join([row_sql] * len(rows))
        sql = f"INSERT INTO {self.quote(self.table.name)} ({columns}) VALUES {values}"
        return sql, params


class CaseUpdate(_RawSql):
    """`UPDATE table SET col = CASE key WHEN ... END ... WHERE key IN (...) [AND fence]`
    for rows of different values, as (sql, parameters) for `exec_driver_sql`."""

    def __init__(self, table: Table, key: str, dialect: Dialect) -> None:
        super().__init__(table, dialect)
        self.key = key

    def build(
        self,
        rows: Mapping[Any, Mapping[str, Any]],
        *,
        extra_sql: Sequence[str] = (),
        fence: tuple[str, Mapping[Any, Any]] | None = None,
    ) -> tuple[str, list[Any]]:
        """`rows` maps each key to its new values; a row without some column keeps its
        value there (an interrupted run sets no statistics); `extra_sql` adds raw
        assignments (e.g. `updated = <now>`); `fence` is (column, key -> value): a row is
        written only if the column still holds it."""
        keys = list(rows)
        names = list(dict.fromkeys(name for values in rows.values() for name in values))
        key_sql = self.quote(self.key)
        sets: list[str] = []
        params: list[Any] = []
        for name in names:
            having = [k for k in keys if name in rows[k]]
            raw = [rows[k][name] for k in having]
            if len(having) == len(keys) and all(v == raw[0] for v in raw):
                # the common case: one value for all rows
                params.append(self._process(name, raw[0]))
                sets.append(f"{self.quote(name)} = {self.mark}")
            else:
                values = [self._process(name, v) for v in raw]
                keep = name if len(having) < len(keys) else None
                sets.append(f"{self.quote(name)} = " + self._case(having, values, params, keep))
        sets.extend(extra_sql)
        where = f"{key_sql} IN ({', '.join(_inline(k) for k in keys)})"
        if fence is not None:
            column, expected = fence
            fence_sql = " ".join(f"WHEN {_inline(k)} THEN {_inline(expected[k])}" for k in keys)
            where += f" AND {self.quote(column)} = CASE {key_sql} {fence_sql} END"
        sql = f"UPDATE {self.quote(self.table.name)} SET {', '.join(sets)} WHERE {where}"
        return sql, params

    def _case(
        self, keys: list[Any], values: list[Any], params: list[Any], keep: str | None = None
    ) -> str:
        """`CASE key WHEN k THEN ? ... [ELSE keep] END`: `keep` is the column itself, for
        the rows that do not set it."""
        parts = [f"CASE {self.quote(self.key)}"]
        for k, v in zip(keys, values, strict=True):
            parts.append(f"WHEN {_inline(k)} THEN {self.mark}")
            params.append(v)
        if keep is not None:
            parts.append(f"ELSE {self.quote(keep)}")
        parts.append("END")
        return " ".join(parts)
