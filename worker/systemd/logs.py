"""structlog set-up: one event per line, with fields, wherever the output goes.

- a terminal: structlog's coloured console renderer, control characters escaped;
- journald (stderr is the journal, `$JOURNAL_STREAM`): the native journal protocol, so
  `journalctl TASK=backup` works and a traceback is one entry; if a datagram cannot be
  sent, a line with a syslog `<N>` priority prefix on stderr instead;
- `log_format = plain`: one logfmt line per event with the `<N>` prefix (what journald's
  stream reader understands when the native socket is not there);
- `log_format = json`: one JSON object per line.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

from cronloop.systemd.entries import JournalRenderer, fallback_line, journal_fields
from cronloop.systemd.journald import stream_is_journal
from cronloop.terminal import escape_console_event

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def choose_format(requested: str, stream: TextIO) -> str:
    """`auto` means: journald if stderr is the journal, console on a TTY, else plain."""
    if requested != "auto":
        return requested
    if stream_is_journal(stream.fileno() if hasattr(stream, "fileno") else 2):
        return "journal"
    return "console" if stream.isatty() else "plain"


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> str:
    """Configure structlog for the process; returns the format chosen. Safe to call again
    (a SIGHUP reload changes the level this way)."""
    stream = stream or sys.stderr
    chosen = choose_format(fmt, stream)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_empty,
    ]
    if chosen != "console":  # the console renderer prints exceptions its own (pretty) way
        shared.append(structlog.processors.format_exc_info)
    renderer: Any
    if chosen == "journal":
        renderer = JournalRenderer()
    elif chosen == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    elif chosen == "console":  # what a person reads: escape sequences shown, not obeyed
        shared.append(escape_console_event)
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    else:
        renderer = _plain_line
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    return chosen


def short_error(exc: BaseException) -> str:
    """An error as one short log value: ``TypeName: first line`` cut to 300 characters.

    A driver's message can run to pages (the statement, its parameters); a log line needs
    the kind and the gist, and the traceback, when wanted, is logged on its own.
    """
    try:
        text = str(exc)
    except Exception:  # an exception whose __str__ raises still gets a name
        text = "<unprintable>"
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:300]


def _drop_empty(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Leave out keys whose value is None, so lines carry only what is known."""
    return {k: v for k, v in event_dict.items() if v is not None}


def _plain_line(_logger: Any, _name: str, event_dict: dict[str, Any]) -> str:
    """`<6>run finished task=backup outcome=success ...`: one line, priority first."""
    event_dict.pop("timestamp", None)  # journald and most collectors stamp lines themselves
    return fallback_line(journal_fields(event_dict))
