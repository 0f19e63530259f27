"""The systemd journal's native protocol, without libsystemd.

Under systemd, stderr is already connected to journald, but a line on stderr becomes one
journal entry with one field (MESSAGE): a traceback turns into twenty entries and the
structured context (task, run id, outcome) is only text. The native protocol sends one
datagram per entry to ``/run/systemd/journal/socket`` with any number of fields, so

    journalctl -u cronloop TASK=backup OUTCOME=failed

works, and a traceback stays one entry. The wire format (systemd.journal-fields(7),
"Native Journal Protocol" in systemd's documentation):

* ``NAME=value\\n`` for a value without a newline;
* ``NAME\\n`` + the value's length as a 64-bit little-endian integer + the value + ``\\n``
  for a value that contains a newline (or any binary data);
* field names are ``[A-Z0-9_]``, at most 64 characters, and must not begin with ``_``
  (those are the journal's trusted fields) nor with a digit.

An entry too large for one datagram (``EMSGSIZE``: larger than the socket's send buffer,
about 208 KiB by default) is passed, as journald allows, through a sealed memfd whose file
descriptor travels with an empty datagram (``SCM_RIGHTS``); nothing is lost. Only where
that is impossible (no ``memfd_create``, sealing refused) are values longer than
:data:`TRUNCATE_AT` bytes cut, marked ``…[truncated]``, and the entry sent again.

Sending never raises: every failure returns False, and the caller (the structlog renderer
below) falls back to writing a line on stderr, which journald still records.

Pieces, from bottom to top: :func:`stream_is_journal` (should logging use the journal at
all?), :class:`JournalSender` (fields to datagram), :func:`journal_fields` (a structlog
event dict to fields), :class:`JournalRenderer` (the structlog processor that ties them).
"""

from __future__ import annotations

import array
import datetime as dt
import enum
import errno
import fcntl
import json
import os
import re
import socket
import struct
import sys
import threading
import traceback
from collections.abc import Mapping
from typing import Any

import structlog

__all__ = [
    "JOURNAL_SOCKET",
    "TRUNCATE_AT",
    "JournalRenderer",
    "JournalSender",
    "fallback_line",
    "field_name",
    "journal_fields",
    "stream_is_journal",
]

#: Where journald listens for native-protocol datagrams.
JOURNAL_SOCKET = "/run/systemd/journal/socket"

#: Bytes kept of a value when an oversized entry must be truncated (the memfd fallback
#: failed). 48 KiB of a traceback is plenty, and several such fields still fit a datagram.
TRUNCATE_AT = 48 * 1024
TRUNCATION_MARKER = "…[truncated]".encode()

#: journald's limit on the length of a field name.
_FIELD_NAME_MAX = 64
_INVALID_NAME_CHARS = re.compile(r"[^A-Z0-9_]")

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


def stream_is_journal(stream_fd: int = 2, env: Mapping[str, str] | None = None) -> bool:
    """Whether ``stream_fd`` (stderr by default) is connected to journald.

    systemd sets ``$JOURNAL_STREAM`` to ``device:inode`` of the stream socket it gives a
    service as stdout/stderr. Comparing it with fstat() of the descriptor is the documented
    test (systemd.exec(5)): the variable alone is inherited by children whose stderr was
    redirected elsewhere (a pipe, a file, a terminal), so it proves nothing by itself.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    device, sep, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    if not sep:
        return False
    try:
        expected = (int(device), int(inode))
        st = os.fstat(stream_fd)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == expected


def field_name(key: str) -> str | None:
    """A journal field name for a context key, or None if nothing valid is left.

    Upper-cased, characters outside ``[A-Z0-9_]`` dropped (``run_id`` -> ``RUN_ID``,
    ``run-id`` -> ``RUNID``), leading ``_`` and digits dropped (``_x`` would claim to be
    a trusted field and journald discards the whole entry for an invalid name), cut to 64.
    """
    name = _INVALID_NAME_CHARS.sub("", key.upper()).lstrip("_0123456789")
    return name[:_FIELD_NAME_MAX] or None


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


def _encode(fields: Mapping[str, object]) -> list[tuple[bytes, bytes]]:
    """Valid (name, value) byte pairs; fields without a valid name are skipped."""
    pairs = []
    for key, value in fields.items():
        name = field_name(key)
        if name is None:
            continue
        data = (
            bytes(value)
            if isinstance(value, bytes | bytearray)
            else _text(value).encode("utf-8", "backslashreplace")
        )
        pairs.append((name.encode("ascii"), data))
    return pairs


def serialize(pairs: list[tuple[bytes, bytes]]) -> bytes:
    """The datagram for an entry (see the module doc for the two encodings)."""
    parts: list[bytes] = []
    for name, value in pairs:
        if b"\n" in value:
            parts += [name, b"\n", struct.pack("<Q", len(value)), value, b"\n"]
        else:
            parts += [name, b"=", value, b"\n"]
    return b"".join(parts)


def _truncate(pairs: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Values longer than TRUNCATE_AT cut there (at a UTF-8 boundary) and marked."""
    out = []
    for name, value in pairs:
        if len(value) > TRUNCATE_AT:
            head = value[:TRUNCATE_AT]
            # Drop a multi-byte character split by the cut, at most 3 bytes.
            head = head[: len(head) - _partial_utf8_tail(head)]
            value = head + TRUNCATION_MARKER
        out.append((name, value))
    return out


def _partial_utf8_tail(data: bytes) -> int:
    """Number of trailing bytes of ``data`` forming an incomplete UTF-8 sequence."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # continuation byte: keep looking for the lead byte
            continue
        if byte & 0x80 == 0:  # ASCII: complete
            return 0
        need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4
        return back if back < need else 0
    return 0


class JournalSender:
    """Sends journal entries, one datagram each, to journald's native socket.

    ``path`` is overridable for tests. The socket is connected on first use and reused;
    it is non-blocking, so a stalled journald makes :meth:`send` return False (and the
    caller write to stderr) instead of blocking the event loop. Thread-safe: tasks running
    in worker threads log too.
    """

    def __init__(self, path: str = JOURNAL_SOCKET) -> None:
        self.path = path
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def send(self, fields: Mapping[str, object]) -> bool:
        """Send one entry. True when journald got it; False (never an exception) otherwise.

        Values may be str (UTF-8 encoded), bytes (sent as is), or anything else (``str()``).
        """
        pairs = _encode(fields)
        if not pairs:
            return False
        with self._lock:
            try:
                self._send_datagram(serialize(pairs))
                return True
            except OSError as exc:
                if exc.errno != errno.EMSGSIZE:
                    self._drop_socket()
                    return False
            # Too big for a datagram: the memfd way, then truncation as a last resort.
            try:
                self._send_memfd(serialize(pairs))
                return True
            except OSError:
                pass
            try:
                self._send_datagram(serialize(_truncate(pairs)))
                return True
            except OSError:
                self._drop_socket()
                return False

    def _connected(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(
                socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
            )
            try:
                sock.connect(self.path)
            except OSError:
                sock.close()
                raise
            self._sock = sock
        return self._sock

    def _send_datagram(self, data: bytes) -> None:
        try:
            self._connected().send(data)
        except (ConnectionRefusedError, ConnectionResetError, BrokenPipeError, FileNotFoundError):
            # journald restarted and bound a new socket at the path: reconnect once.
            self._drop_socket()
            self._connected().send(data)

    def _send_memfd(self, data: bytes) -> None:
        """Pass the entry in a sealed memfd; journald reads it and the fd is closed here.

        journald accepts a descriptor only if the memfd is sealed against writing and
        resizing, so the sender cannot change the entry while journald reads it.
        """
        fd = os.memfd_create("cronloop-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())]
            self._connected().sendmsg([], rights)
        finally:
            os.close(fd)

    def _drop_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def close(self) -> None:
        """Release the socket; a later send reconnects."""
        with self._lock:
            self._drop_socket()


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

    Contract, for the logging set-up (``worker/logs.py``): use it as the last processor,
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
