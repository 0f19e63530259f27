"""What a log event becomes in the journal: its fields, MESSAGE text and priority, the
stderr fallback line, and the structlog renderer that sends entries.

:func:`journal_fields` maps a structlog event dict to journal fields (one entry per event,
a traceback kept inside it); :func:`fallback_line` is the same entry as ``<N>``-prefixed
text for stderr (also the ``plain`` log format); :class:`JournalRenderer` is the final
structlog processor that sends through :class:`~cronloop.systemd.journald.JournalSender`
and falls back to the line. This module never touches a socket (that is
``cronloop.systemd.journald``) and never knows the loop or the tasks.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import sys
import traceback
from collections.abc import Mapping
from typing import Any

import structlog

from cronloop.systemd.journald import JournalSender, field_name

__all__ = ["DEFAULT_PRIORITY", "PRIORITIES", "JournalRenderer", "fallback_line", "journal_fields"]

#: structlog level names to syslog priorities (the journal's PRIORITY field).
PRIORITIES: Mapping[str, int] = {
    "critical": 2,
    "fatal": 2,
    "exception": 3,
    "error": 3,
    "warning": 4,
    "warn": 4,
    "notice": 5,
    "info": 6,
    "debug": 7,
}
DEFAULT_PRIORITY = 6

#: Event-dict keys that journal_fields() turns into specific journal fields; they are not
#: repeated in the ``key=value`` part of MESSAGE nor as generic fields.
_CODE_KEYS: Mapping[str, str] = {
    "pathname": "CODE_FILE",
    "filename": "CODE_FILE",
    "lineno": "CODE_LINE",
    "func_name": "CODE_FUNC",
}
_SPECIAL_KEYS = frozenset({"event", "level", "exception", "exc_info", *_CODE_KEYS})

#: Context keys left out of MESSAGE's ``key=value`` text (they remain fields): journald
#: time-stamps every entry itself, so a timestamp would only lengthen each line.
_NOT_IN_MESSAGE = frozenset({"timestamp"})

#: A generic context key that normalises to one of the fields journal_fields() sets itself
#: is renamed with this prefix rather than overwriting it (``message=`` -> CONTEXT_MESSAGE).
_COLLISION_PREFIX = "CONTEXT_"


def _text(value: object) -> str:
    """How a context value is written, both as a field and in MESSAGE.

    ``str()`` except where that is unhelpful: an aware datetime in ISO 8601 (no space, so
    logfmt needs no quotes), an Enum by its value (``success``, not ``Outcome.SUCCESS``).
    """
    if isinstance(value, str):
        return value
    if isinstance(value, enum.Enum):
        return _text(value.value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "backslashreplace")
    return str(value)


def _logfmt_value(text: str) -> str:
    """Quote a value for the one-line ``key=value`` part of MESSAGE when it needs it."""
    if text and not any(c.isspace() or c in '"=\\' or not c.isprintable() for c in text):
        return text
    return json.dumps(text, ensure_ascii=False)


def _format_exc_info(exc_info: object) -> str | None:
    """A traceback for an ``exc_info`` that no earlier processor formatted.

    Normally structlog's ``format_exc_info`` has already produced ``exception``; this keeps
    a forgotten processor from logging ``exc_info=True`` instead of the traceback.
    """
    if isinstance(exc_info, BaseException):
        return "".join(traceback.format_exception(exc_info))
    if isinstance(exc_info, tuple) and len(exc_info) == 3 and exc_info[1] is not None:
        return "".join(traceback.format_exception(*exc_info))
    if exc_info is True and sys.exc_info()[1] is not None:
        return traceback.format_exc()
    return None


def journal_fields(
    event_dict: Mapping[str, Any], *, identifier: str = "cronloop"
) -> dict[str, str]:
    """Map a structlog event dict to journal fields.

    * ``MESSAGE``: the ``event`` text, then `` key=value`` for each remaining context key
      (logfmt-style quoting), so plain ``journalctl`` shows the details; then, if there is
      an ``exception`` (a traceback formatted by structlog's ``format_exc_info``), the
      traceback on the following lines: one entry, not one per line.
    * ``PRIORITY`` from ``level`` (critical 2, error 3, warning 4, info 6, debug 7;
      6 when absent or unknown); ``SYSLOG_IDENTIFIER`` = ``identifier``.
    * ``EXCEPTION``: the traceback again, alone, for ``journalctl -o verbose`` and queries.
    * ``CODE_FILE``/``CODE_LINE``/``CODE_FUNC`` from ``pathname`` or ``filename``,
      ``lineno``, ``func_name`` (structlog's CallsiteParameterAdder).
    * Every other key as a field named by :func:`field_name` (``run_id`` -> ``RUN_ID``);
      keys that leave no valid name are only in MESSAGE; a key that would overwrite one of
      the fields above gets the prefix ``CONTEXT_``.
    """
    fields: dict[str, str] = {}
    level = str(event_dict.get("level", "")).lower()
    fields["PRIORITY"] = str(PRIORITIES.get(level, DEFAULT_PRIORITY))
    fields["SYSLOG_IDENTIFIER"] = identifier

    for key, code_field in _CODE_KEYS.items():
        if key in event_dict and code_field not in fields:
            fields[code_field] = _text(event_dict[key])

    exception = event_dict.get("exception")
    exception_text = _text(exception) if exception is not None else None
    if exception_text is None and event_dict.get("exc_info"):
        exception_text = _format_exc_info(event_dict["exc_info"])
    if exception_text is not None:
        exception_text = exception_text.rstrip("\n")
        fields["EXCEPTION"] = exception_text

    line = [_text(event_dict.get("event", ""))]
    context: dict[str, str] = {}
    for key, value in event_dict.items():
        if key in _SPECIAL_KEYS:
            continue
        text = _text(value)
        if key not in _NOT_IN_MESSAGE:
            line.append(f"{key}={_logfmt_value(text)}")
        name = field_name(key)
        if name is not None:
            context[name] = text

    message = " ".join(line)
    if exception_text:
        message = f"{message}\n{exception_text}"
    fields["MESSAGE"] = message

    for name, text in context.items():
        fields[_COLLISION_PREFIX + name if name in fields else name] = text
    return fields


def fallback_line(fields: Mapping[str, str]) -> str:
    """The entry as text for stderr: ``<N>`` + MESSAGE, ``<N>`` repeated on every line.

    journald parses a ``<N>`` prefix on each line of a service's stderr as that line's
    priority (``SyslogLevelPrefix=``, on by default), so an error's traceback lines keep
    the error priority instead of becoming info.
    """
    prefix = f"<{fields.get('PRIORITY', DEFAULT_PRIORITY)}>"
    return "\n".join(prefix + line for line in fields.get("MESSAGE", "").split("\n"))


class JournalRenderer:
    """A structlog final processor that writes entries with the native journal protocol.

    Contract, for the logging set-up (``cronloop.systemd.logs``): use it as the last processor,
    with a logger that writes lines to stderr, e.g. ``structlog.PrintLoggerFactory(
    sys.stderr)``. For each event it

    * sends the entry to journald (see :func:`journal_fields`); on success it raises
      ``structlog.DropEvent``, so the logger writes nothing (no duplicate on stderr);
    * if sending failed (no journald socket, queue full, ...) it returns
      :func:`fallback_line` (``"<N>message key=value"``), which the logger writes to
      stderr: under systemd journald still records it, with the right priority.

    ``PRIORITY`` comes from ``level`` (structlog's ``add_log_level``) or, when that
    processor is absent, from the method name (``log.warning`` -> 4). The ``exception``
    key should come from ``format_exc_info``; an unformatted ``exc_info`` is formatted here.
    """

    def __init__(
        self, sender: JournalSender | None = None, *, identifier: str = "cronloop"
    ) -> None:
        self.sender = sender if sender is not None else JournalSender()
        self.identifier = identifier

    def __call__(
        self, logger: object, method_name: str, event_dict: structlog.typing.EventDict
    ) -> str:
        if "level" not in event_dict:
            event_dict = {**event_dict, "level": method_name}
        fields = journal_fields(event_dict, identifier=self.identifier)
        if self.sender.send(fields):
            raise structlog.DropEvent
        return fallback_line(fields)
