"""sd_notify(3) for the service manager, without libsystemd.

systemd learns about the state of a ``Type=notify`` service from datagrams that the service
sends to ``$NOTIFY_SOCKET``: ``READY=1`` ends the start job (``systemctl start`` returns),
``STATUS=`` is shown by ``systemctl status``, ``WATCHDOG=1`` keeps ``WatchdogSec=`` from
killing the service, ``EXTEND_TIMEOUT_USEC=`` buys time during a slow start or drain.

The protocol is a handful of ``NAME=value`` lines in one AF_UNIX datagram, so it is
implemented here directly instead of pulling in a C binding. Two rules shape the code:

* Outside systemd (a terminal, tests, a container) there is no ``NOTIFY_SOCKET`` and every
  method is a silent no-op, so callers never need to ask "am I under systemd?".
* Notification is best effort. A failure to notify must never take the worker down: errors
  are logged (rate-limited, since the watchdog pings every few seconds) and swallowed, and
  every method returns whether the datagram went out.

Typical use by the supervisor::

    notifier = Notifier()
    notifier.ready("idle, 0 running")
    interval = notifier.watchdog_interval_s   # None: no WatchdogSec=, no ping loop
    ...
    notifier.status("3 running, next: backup at 23:30")   # deduplicated
    notifier.stopping("draining 3 runs")
    notifier.extend_timeout(15)

A ``Notifier`` is meant to be used from the event loop's thread; it is not locked.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from types import TracebackType

import structlog

from cronloop.systemd.datagram import UnixDatagram

__all__ = ["Notifier"]

#: At most one "sd_notify failed" warning per this many seconds: a broken notify socket
#: would otherwise log on every watchdog ping and status change.
ERROR_LOG_INTERVAL_S = 60.0


def _one_line(value: str) -> str:
    """Replace line breaks by spaces: the protocol is newline-separated assignments, so a
    newline inside a value would end it early and smuggle in another field."""
    return value.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")


def _socket_address(value: str) -> str | None:
    """Turn ``$NOTIFY_SOCKET`` into an address for ``socket.connect``.

    ``/path`` is a filesystem socket, ``@name`` an abstract one (Linux spells those with a
    leading NUL byte). Anything else (``vsock:`` addresses of systemd >= 254, garbage) is
    not supported and disables notification instead of failing later on every send.
    """
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None


class Notifier:
    """Sends sd_notify datagrams to the service manager; a no-op outside systemd.

    ``env`` defaults to ``os.environ``; tests pass a dict. The environment is read once,
    here: systemd sets it at exec time and it does not change afterwards.
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        environ: Mapping[str, str] = os.environ if env is None else env
        address = _socket_address(environ.get("NOTIFY_SOCKET", ""))
        self._channel = UnixDatagram(address) if address is not None else None
        self._watchdog_usec = self._parse_watchdog(environ)
        self._last_status: str | None = None
        self._clock = clock
        self._last_error_log: float | None = None
        self._suppressed_errors = 0

    @staticmethod
    def _parse_watchdog(environ: Mapping[str, str]) -> int | None:
        """``WATCHDOG_USEC`` as in sd_watchdog_enabled(3).

        ``WATCHDOG_PID`` names the process the watchdog applies to; a process that merely
        inherited the environment (a child we spawned) must not believe it is watched, so a
        PID other than ours disables the watchdog. Absent ``WATCHDOG_PID`` means "you".
        """
        try:
            usec = int(environ.get("WATCHDOG_USEC", ""))
        except ValueError:
            return None
        if usec <= 0:
            return None
        pid = environ.get("WATCHDOG_PID")
        if pid is not None:
            try:
                if int(pid) != os.getpid():
                    return None
            except ValueError:
                return None
        return usec

    # -- properties -----------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """True when running under a service manager that listens for notifications."""
        return self._channel is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to call :meth:`watchdog`, in seconds, or None when no watchdog is set.

        Half the configured ``WatchdogSec=``, as sd_watchdog_enabled(3) recommends, so one
        late ping (a slow event-loop iteration) does not get the service killed.
        """
        if self._watchdog_usec is None or not self.enabled:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    # -- the messages -----------------------------------------------------------------

    def ready(self, status: str | None = None) -> bool:
        """Start-up is complete: ``systemctl start`` returns and dependents may start."""
        return self._send_state("READY=1", status)

    def status(self, text: str, *, force: bool = False) -> bool:
        """Set the free-form status line shown by ``systemctl status``.

        The supervisor refreshes the status on every loop iteration; an unchanged text is
        not sent again (unless ``force``), which keeps the manager's message rate low.
        """
        text = _one_line(text)
        if not force and text == self._last_status:
            return False
        return self._send_state(None, text)

    def stopping(self, status: str | None = None) -> bool:
        """The drain has begun (a stop request or the planned lifetime end)."""
        return self._send_state("STOPPING=1", status)

    def reloading(self, status: str | None = None) -> bool:
        """A configuration reload (SIGHUP) has begun.

        ``MONOTONIC_USEC`` is what systemd >= 253 requires for ``Type=notify-reload`` to
        match the message with the reload request; older versions ignore the extra field.
        Follow up with :meth:`reloaded` when done.
        """
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        fields = f"RELOADING=1\nMONOTONIC_USEC={now_usec}"
        return self._send_state(fields, status)

    def reloaded(self, status: str | None = None) -> bool:
        """The reload finished: ``READY=1`` ends the reloading state."""
        return self._send_state("READY=1", status)

    def watchdog(self) -> bool:
        """Ping the watchdog. Sends nothing when no watchdog applies to this process."""
        if self.watchdog_interval_s is None:
            return False
        return self._send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more time for the current start, stop or reload job.

        Not cumulative: systemd's job timeout becomes "now + seconds", so a long drain calls
        this repeatedly, each time with a little more than the time until the next call.
        """
        if not math.isfinite(seconds) or seconds < 0:
            seconds = 0.0
        return self._send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    # -- plumbing ---------------------------------------------------------------------

    def _send_state(self, head: str | None, status: str | None) -> bool:
        lines = [] if head is None else [head]
        if status is not None:
            status = _one_line(status)
            lines.append(f"STATUS={status}")
        sent = self._send("\n".join(lines))
        if sent and status is not None:
            # Remembered only once delivered, so a failed update is retried next time.
            self._last_status = status
        return sent

    def _send(self, message: str) -> bool:
        """One datagram; returns whether it was sent. Never raises."""
        if self._channel is None:
            return False
        try:
            # After a manager re-exec or a transient error the channel reconnects.
            self._channel.send(message.encode("utf-8", "backslashreplace"))
        except OSError as exc:
            self._log_error(exc, message)
            return False
        return True

    def _log_error(self, exc: OSError, message: str) -> None:
        now = self._clock()
        if self._last_error_log is not None and now - self._last_error_log < ERROR_LOG_INTERVAL_S:
            self._suppressed_errors += 1
            return
        # Looked up here, not at import: errors are rare, and a logger bound at import time
        # would ignore a structlog configuration (or capture_logs) set up later.
        structlog.get_logger("cronloop.systemd").warning(
            "sd_notify failed",
            error=str(exc),
            notification=message.split("\n", 1)[0],
            suppressed=self._suppressed_errors,
        )
        self._last_error_log = now
        self._suppressed_errors = 0

    def close(self) -> None:
        """Release the socket. The notifier stays usable: the next send reconnects."""
        if self._channel is not None:
            self._channel.close()

    def __enter__(self) -> Notifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
