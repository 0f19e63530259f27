"""The systemd journal's native protocol, without libsystemd: fields in, one entry out.

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
in ``cronloop.systemd.entries``) falls back to writing a line on stderr, which journald
still records. This module owns the wire format and :func:`stream_is_journal` (should
logging use the journal at all?); it never knows structlog or what a log event holds
(``cronloop.systemd.entries`` turns events into fields); the socket itself is
``cronloop.systemd.datagram``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import struct
import threading
from collections.abc import Mapping

from cronloop.systemd.datagram import UnixDatagram

__all__ = [
    "JOURNAL_SOCKET",
    "TRUNCATE_AT",
    "JournalSender",
    "field_name",
    "serialize",
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
            else str(value).encode("utf-8", "backslashreplace")
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

    ``path`` is overridable for tests. The socket (``UnixDatagram``: connected on first
    use, reused, non-blocking, reconnecting after a journald restart) never blocks, so a
    stalled journald makes :meth:`send` return False (and the caller write to stderr)
    instead of blocking the event loop. Thread-safe: tasks running in worker threads log too.
    """

    def __init__(self, path: str = JOURNAL_SOCKET) -> None:
        self.path = path
        self._channel = UnixDatagram(path)
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
                self._channel.send(serialize(pairs))
                return True
            except OSError as exc:
                if exc.errno != errno.EMSGSIZE:
                    return False
            # Too big for a datagram: the memfd way, then truncation as a last resort.
            try:
                self._send_memfd(serialize(pairs))
                return True
            except OSError:
                pass
            try:
                self._channel.send(serialize(_truncate(pairs)))
                return True
            except OSError:
                self._channel.close()
                return False

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
            self._channel.send_fds([fd])
        finally:
            os.close(fd)

    def close(self) -> None:
        """Release the socket; a later send reconnects."""
        with self._lock:
            self._channel.close()
