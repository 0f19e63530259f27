"""The one AF_UNIX datagram socket that talks to systemd (sd_notify and the journal).

Both protocols send one datagram per message to a socket systemd binds: the notify
socket (``$NOTIFY_SOCKET``) and journald's ``/run/systemd/journal/socket``. What they
share is here: connect on first use and keep the socket; never block (a stalled manager
or journald must not stall the event loop: the send fails instead); close-on-exec (a
task's child process must not inherit a channel to PID 1); after the peer restarted and
bound a new socket at the same path, reconnect once. This module knows nothing of what
the datagrams say, and it never logs: callers decide what a failure means.
"""

from __future__ import annotations

import array
import errno
import socket
from collections.abc import Callable

__all__ = ["UnixDatagram"]

#: The errors that mean "the socket we hold is stale" (peer re-exec'd or restarted).
_PEER_GONE = (ConnectionRefusedError, ConnectionResetError, BrokenPipeError, FileNotFoundError)


class UnixDatagram:
    """A connected, non-blocking, close-on-exec AF_UNIX datagram socket, opened lazily.

    ``address`` is a filesystem path or, with a leading NUL byte, an abstract name. Every
    send raises ``OSError`` on failure, after dropping the socket unless the message was
    too big (``EMSGSIZE``), so the next send starts afresh. Not thread-safe: a caller used
    from several threads holds its own lock.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self._sock: socket.socket | None = None

    @property
    def sock(self) -> socket.socket | None:
        """The socket currently held, if any (for tests and diagnostics)."""
        return self._sock

    def send(self, data: bytes) -> None:
        """Send one datagram; reconnect once if the peer went away since the last send."""
        self._with_reconnect(lambda sock: sock.send(data))

    def send_fds(self, fds: list[int]) -> None:
        """Send an empty datagram carrying file descriptors (``SCM_RIGHTS``)."""
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        self._with_reconnect(lambda sock: sock.sendmsg([], rights))

    def close(self) -> None:
        """Release the socket; a later send reconnects."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _with_reconnect(self, op: Callable[[socket.socket], object]) -> None:
        try:
            try:
                op(self._connected())
            except _PEER_GONE:
                self.close()
                op(self._connected())
        except OSError as exc:
            if exc.errno != errno.EMSGSIZE:  # too big is about the message, not the socket
                self.close()
            raise

    def _connected(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(
                socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
            )
            try:
                sock.connect(self.address)
            except OSError:
                sock.close()
                raise
            self._sock = sock
        return self._sock
