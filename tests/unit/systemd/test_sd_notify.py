"""worker/systemd.py against real AF_UNIX datagram sockets standing in for PID 1."""

from __future__ import annotations

import fcntl
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from cronloop.systemd.notify import ERROR_LOG_INTERVAL_S, Notifier


class Manager:
    """The receiving end of NOTIFY_SOCKET, as systemd binds it."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(2)

    @property
    def env_value(self) -> str:
        return "@" + self.address[1:] if self.address.startswith("\0") else self.address

    def recv(self) -> str:
        return self.sock.recv(65536).decode()

    def nothing_pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(65536)
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(2)
        return False

    def close(self) -> None:
        self.sock.close()
        if not self.address.startswith("\0") and os.path.exists(self.address):
            os.unlink(self.address)


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[Manager]:
    m = Manager(str(tmp_path / "notify"))
    yield m
    m.sock.close()


@pytest.fixture
def notifier(manager: Manager) -> Iterator[Notifier]:
    n = Notifier({"NOTIFY_SOCKET": manager.env_value})
    yield n
    n.close()


def test_ready_with_and_without_status(manager: Manager, notifier: Notifier) -> None:
    assert notifier.enabled
    assert notifier.ready("idle, 0 running") is True
    assert manager.recv() == "READY=1\nSTATUS=idle, 0 running"
    assert notifier.ready() is True
    assert manager.recv() == "READY=1"


def test_abstract_socket_address() -> None:
    m = Manager(f"\0cronloop-test-{uuid.uuid4().hex}")
    try:
        with Notifier({"NOTIFY_SOCKET": m.env_value}) as n:
            assert n.ready("up")
            assert m.recv() == "READY=1\nSTATUS=up"
    finally:
        m.close()


def test_every_message(manager: Manager, notifier: Notifier) -> None:
    assert notifier.stopping("draining 2 runs")
    assert manager.recv() == "STOPPING=1\nSTATUS=draining 2 runs"
    assert notifier.stopping()
    assert manager.recv() == "STOPPING=1"
    assert notifier.reloaded()
    assert manager.recv() == "READY=1"
    assert notifier.extend_timeout(1.5)
    assert manager.recv() == "EXTEND_TIMEOUT_USEC=1500000"
    assert notifier.extend_timeout(-3)
    assert manager.recv() == "EXTEND_TIMEOUT_USEC=0"
    assert manager.nothing_pending()


def test_reloading_carries_clock_monotonic(manager: Manager, notifier: Notifier) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    match = re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=(\d+)", manager.recv())
    assert match is not None
    assert before <= int(match[1]) <= after


def test_status_is_deduplicated(manager: Manager, notifier: Notifier) -> None:
    assert notifier.status("3 running")
    assert manager.recv() == "STATUS=3 running"
    assert notifier.status("3 running") is False
    assert manager.nothing_pending()
    assert notifier.status("3 running", force=True)
    assert manager.recv() == "STATUS=3 running"
    assert notifier.status("2 running")
    assert manager.recv() == "STATUS=2 running"
    # ready() and stopping() count as the last status sent, too.
    notifier.ready("idle")
    manager.recv()
    assert notifier.status("idle") is False
    notifier.stopping("busy")
    manager.recv()
    assert notifier.status("busy") is False
    assert manager.nothing_pending()


def test_newlines_in_status_become_spaces(manager: Manager, notifier: Notifier) -> None:
    assert notifier.status("line one\nline two\r\nthree\rfour")
    assert manager.recv() == "STATUS=line one line two three four"
    # The normalised text is what deduplication compares.
    assert notifier.status("line one line two three four") is False
    assert notifier.ready("a\nb")
    assert manager.recv() == "READY=1\nSTATUS=a b"
    # No value can inject a second assignment.
    assert notifier.status("x\nREADY=1")
    assert manager.recv() == "STATUS=x READY=1"


def test_watchdog(manager: Manager) -> None:
    env = {"NOTIFY_SOCKET": manager.env_value, "WATCHDOG_USEC": "30000000"}
    with Notifier(env) as n:
        assert n.watchdog_interval_s == 15.0
        assert n.watchdog()
        assert manager.recv() == "WATCHDOG=1"
    with Notifier({**env, "WATCHDOG_PID": str(os.getpid())}) as n:
        assert n.watchdog_interval_s == 15.0


@pytest.mark.parametrize(
    "extra",
    [
        {"WATCHDOG_PID": "1"},  # the watchdog is another process's (we inherited the env)
        {"WATCHDOG_PID": "not-a-pid"},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "soon"},
        {"WATCHDOG_USEC": ""},
    ],
)
def test_watchdog_disabled(manager: Manager, extra: dict[str, str]) -> None:
    env = {"NOTIFY_SOCKET": manager.env_value, "WATCHDOG_USEC": "30000000", **extra}
    with Notifier(env) as n:
        assert n.watchdog_interval_s is None
        assert n.watchdog() is False
    assert manager.nothing_pending()


def test_no_watchdog_without_watchdog_usec(manager: Manager, notifier: Notifier) -> None:
    assert notifier.watchdog_interval_s is None
    assert notifier.watchdog() is False
    assert manager.nothing_pending()


@pytest.mark.parametrize("value", [None, "", "relative/path", "vsock:2:1234", "@"])
def test_no_op_without_usable_notify_socket(
    value: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"WATCHDOG_USEC": "30000000"}
    if value is not None:
        env["NOTIFY_SOCKET"] = value
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    for n in (Notifier(env), Notifier()):
        with capture_logs() as logs:
            assert n.enabled is False
            assert n.watchdog_interval_s is None
            results = [
                n.ready("x"),
                n.status("x"),
                n.stopping("x"),
                n.reloading(),
                n.reloaded(),
                n.watchdog(),
                n.extend_timeout(5),
            ]
            n.close()
        assert results == [False] * len(results)
        assert logs == []


def test_send_errors_are_logged_rate_limited_not_raised(tmp_path: Path) -> None:
    now = [1000.0]
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "missing")}, clock=lambda: now[0])
    assert n.enabled
    with capture_logs() as logs:
        assert n.ready("x") is False
        assert n.watchdog() is False  # no watchdog: not even attempted
        assert n.status("a") is False
        assert n.stopping() is False
        now[0] += ERROR_LOG_INTERVAL_S - 1
        assert n.extend_timeout(1) is False
        now[0] += 1
        assert n.status("b") is False
    assert [(e["event"], e["log_level"]) for e in logs] == [("sd_notify failed", "warning")] * 2
    assert logs[0]["notification"] == "READY=1"
    assert logs[0]["suppressed"] == 0
    assert "No such file" in logs[0]["error"]
    assert logs[1]["suppressed"] == 3
    assert logs[1]["notification"] == "STATUS=b"


def test_failed_status_is_retried_and_socket_reconnects(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    n = Notifier({"NOTIFY_SOCKET": path})
    with capture_logs():
        assert n.status("3 running") is False  # nobody listening yet
    m = Manager(path)
    try:
        # Not deduplicated: the failed one was never delivered.
        assert n.status("3 running")
        assert m.recv() == "STATUS=3 running"
        # The manager goes away and comes back (a re-exec binds a new socket).
        m.close()
        with capture_logs():  # (rate-limited: the first failure was logged already)
            assert n.status("2 running") is False
        m = Manager(path)
        assert n.status("2 running")
        assert m.recv() == "STATUS=2 running"
    finally:
        n.close()
        m.close()


def test_one_nonblocking_cloexec_socket_is_reused(manager: Manager, notifier: Notifier) -> None:
    notifier.ready()
    assert notifier._channel is not None
    sock = notifier._channel.sock
    assert sock is not None
    notifier.status("a")
    notifier.status("b")
    assert notifier._channel.sock is sock
    assert sock.getblocking() is False
    assert fcntl.fcntl(sock.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    notifier.close()
    assert notifier._channel.sock is None
    assert notifier.status("c")  # usable after close(): reconnects
    assert [manager.recv() for _ in range(4)] == ["READY=1", "STATUS=a", "STATUS=b", "STATUS=c"]


def test_full_manager_queue_does_not_block(manager: Manager, notifier: Notifier) -> None:
    # Nobody reads the manager's socket: once its queue is full a blocking socket would
    # hang here; the notifier must drop the message and report False instead.
    started = time.monotonic()
    with capture_logs() as logs:
        results = [notifier.status(str(i)) for i in range(5000)]
    assert time.monotonic() - started < 5
    assert results[0] is True
    assert False in results
    assert logs and logs[0]["event"] == "sd_notify failed"
