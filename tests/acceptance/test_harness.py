"""The shared worker wrapper itself (`tests.support.worker`): waits end when the line
arrives or the process is gone, never by sleeping out the timeout."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from tests.support.env import base_env
from tests.support.worker import WorkerProcess

# Logs one JSON line, then another on SIGUSR2, and exits 3 on SIGTERM.
SCRIPT = r"""
import json, signal, sys, time
def say(event, **kw):
    print(json.dumps({"event": event, **kw}), file=sys.stderr, flush=True)
signal.signal(signal.SIGUSR2, lambda *_: say("poked", n=2))
signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))
print("not json", flush=True)
say("worker started", n=1)
while True:
    time.sleep(1)
"""


def start(tmp_path: Path, script: str = SCRIPT) -> WorkerProcess:
    return WorkerProcess(
        [sys.executable, "-c", script],
        base_env(),
        tmp_path,
        label="probe",
        log_path=tmp_path / "probe.log",
    )


def test_waits_for_events_signals_and_exit(tmp_path: Path) -> None:
    w = start(tmp_path)
    try:
        assert w.wait_for("worker started", timeout=20)["n"] == 1
        since = w.mark()
        w.signal(signal.SIGUSR2)
        event = w.wait_for("poked", timeout=20, since=since, n=2)
        assert event["_t"] <= time.time()
        assert w.find("poked", since=w.mark()) == []
        w.signal(signal.SIGTERM)
        assert w.wait(timeout=20) == 3
    finally:
        w.kill()
    assert w.errors()["non-JSON output lines"] == 1
    assert '"poked"' in (tmp_path / "probe.log").read_text()


def test_a_wait_fails_at_once_when_the_process_is_gone(tmp_path: Path) -> None:
    w = start(tmp_path, "print('bye')")
    began = time.monotonic()
    with pytest.raises(AssertionError, match=r"(?s)no 1x 'never'.*exit 0.*bye"):
        w.wait_for("never", timeout=60)
    assert time.monotonic() - began < 30


class SlowToExit(WorkerProcess):
    """A reader thread that lingers after its last line and its last notify, as a
    descheduled thread does on a loaded machine."""

    def _pump(self) -> None:
        super()._pump()
        time.sleep(2)


def test_a_wait_ends_with_the_output_not_with_the_reader_thread(tmp_path: Path) -> None:
    """The wait ends when the output ends, even while the reader thread is still alive
    (it used to ask the thread, and slept out its whole timeout: 60 s in CI on 3.13)."""
    w = SlowToExit([sys.executable, "-c", "print('bye')"], base_env(), tmp_path, label="probe")
    began = time.monotonic()
    with pytest.raises(AssertionError, match=r"(?s)no 1x 'never'.*bye"):
        w.wait_for("never", timeout=20)
    assert time.monotonic() - began < 10


def test_a_wait_times_out_with_the_log_tail(tmp_path: Path) -> None:
    w = start(tmp_path)
    try:
        w.wait_for("worker started", timeout=20)
        with pytest.raises(AssertionError, match=r"(?s)within 0.3s.*worker started"):
            w.wait_for("never", timeout=0.3)
    finally:
        w.kill()
    assert w.killed and w.proc.returncode == -signal.SIGKILL
