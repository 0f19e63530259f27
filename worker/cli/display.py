"""How tasks and runs are shown to people (tables, control characters escaped) and to
programs (JSON, which escapes them by itself)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, tzinfo
from typing import Any

from cronloop.definitions.registry import Registry
from cronloop.store.sql.claims import RunEntry, TaskState
from cronloop.terminal import escape_controls

STATUS_COLUMNS = (
    "Task",
    "Status",
    "Last Run",
    "Next Run",
    "Nb Run",
    "Avg. Dur.",
    "Last Outcome",
    "Running",
)


def _when(value: datetime | None, tz: tzinfo) -> str:
    return value.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _secs(value: float | None) -> str:
    return f"{value:.3f} s" if value is not None else "-"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Aligned columns. Every cell is escaped first: names, messages and reasons come from
    the database and task code, and must not steer the operator's terminal."""
    rows = [[escape_controls(str(c)) for c in row] for row in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    line = "-+-".join("-" * w for w in widths)
    out = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), line]
    out += [" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(r.rstrip() for r in out)


def status_table(states: Sequence[TaskState], tz: tzinfo) -> str:
    """iTop's status table (Task Class | Status | Last Run | Next Run | Nb Run | Avg. Dur.),
    plus the last outcome and whether it runs right now."""
    rows = []
    for s in states:
        status = (
            s.status
            if not s.status_reason or s.status == "active"
            else f"{s.status}: {s.status_reason}"
        )
        outcome = s.last_outcome or "-"
        if s.consecutive_failures:
            outcome += f" ({s.consecutive_failures} in a row)"
        rows.append(
            (
                s.name,
                status[:80],
                _when(s.latest_run_start, tz),
                _when(s.next_run, tz),
                str(s.runs),
                _secs(s.avg_duration_s),
                outcome,
                "yes" if s.running else "no",
            )
        )
    return table(STATUS_COLUMNS, rows)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def status_json(states: Sequence[TaskState]) -> str:
    return json.dumps(status_items(states), indent=2)


def status_items(states: Sequence[TaskState]) -> list[dict[str, Any]]:
    """What `status --json` (and the web API's /api/tasks) gives for each task."""
    return [
        {
            "name": s.name,
            "status": s.status,
            "status_reason": s.status_reason,
            "schedule": s.schedule,
            "last_run": _iso(s.latest_run_start),
            "last_run_end": _iso(s.latest_run_end),
            "next_run": _iso(s.next_run),
            "runs": s.runs,
            "avg_duration": s.avg_duration_s,
            "min_duration": s.min_duration_s,
            "max_duration": s.max_duration_s,
            "last_outcome": s.last_outcome,
            "last_message": s.last_message,
            "last_error": s.last_error,
            "running": s.running,
            "owner": s.owner,
            "consecutive_failures": s.consecutive_failures,
        }
        for s in states
    ]


def history_table(entries: Sequence[RunEntry], tz: tzinfo) -> str:
    rows = [
        (
            e.task_name,
            _when(e.started, tz),
            _secs(e.duration_s),
            e.outcome,
            ((e.message or e.error or "").splitlines() or [""])[0][:60],
            e.run_id[:8],
            e.worker,
        )
        for e in entries
    ]
    return table(("Task", "Started", "Duration", "Outcome", "Message", "Run", "Worker"), rows)


def history_json(entries: Sequence[RunEntry]) -> str:
    return json.dumps(history_items(entries), indent=2)


def history_items(entries: Sequence[RunEntry]) -> list[dict[str, Any]]:
    """What `history --json` (and the web API's /api/history) gives for each run."""
    out: list[dict[str, Any]] = []
    for e in entries:
        item = dict(vars(e))
        for key in ("scheduled_for", "started", "ended"):
            item[key] = _iso(item[key])
        out.append(item)
    return out


def tasks_table(registry: Registry) -> str:
    rows = [
        (
            s.name,
            s.schedule_text,
            f"{s.timeout_s:g} s",
            "blocking" if s.blocking else "async",
            "yes" if s.runnable else f"no: {s.error or 'enabled = 0'}",
            s.description[:60],
        )
        for s in registry
    ]
    return table(("Task", "Schedule", "Timeout", "Kind", "Enabled", "Description"), rows)
