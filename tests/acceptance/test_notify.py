"""sd_notify from a real `cronloop run`: the test binds the datagram socket systemd would."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from tests.support.env import CRONLOOP, base_env
from tests.support.worker import WorkerProcess

TASKS = """
from cronloop import task

@task(every=0.3, timeout=5)
async def tick(ctx):
    await ctx.checkpoint()
    return "tick"
"""


def _collect(sock: socket.socket, proc: subprocess.Popen[bytes], limit_s: float) -> list[str]:
    messages: list[str] = []
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            messages.append(sock.recv(4096).decode())
        except TimeoutError:
            if proc.poll() is not None:
                break
    return messages


def test_notify_sequence_ready_status_watchdog_stopping_and_exit_75(tmp_path: Path) -> None:
    (tmp_path / "notify_tasks.py").write_text(TASKS)
    address = f"@cronloop-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + address[1:])
        sock.settimeout(0.2)
        env = {
            **base_env(pythonpath=[tmp_path], state_dir=tmp_path),
            "NOTIFY_SOCKET": address,
            "WATCHDOG_USEC": "400000",  # ping every 0.2 s
        }
        args = [
            "run",
            "--task_modules=notify_tasks",
            "--max_lifetime=2",
            "--lifetime_jitter_s=0",
            "--poll_interval=0.5",
        ]
        worker = WorkerProcess([str(CRONLOOP), *args], env, tmp_path, label="notify")
        try:
            messages = _collect(sock, worker.proc, limit_s=30)
            code = worker.wait(timeout=30)
        finally:
            worker.kill()
    assert code == 75, worker.tail()
    kinds = [m.split("\n")[0].split("=")[0] for m in messages]
    assert "EXTEND_TIMEOUT_USEC" in kinds[0]  # start-up may take long: systemd is told first
    ready = kinds.index("READY")
    assert kinds.count("WATCHDOG") >= 4, kinds
    assert any(k == "STATUS" and "running" in m for k, m in zip(kinds, messages, strict=True))
    stopping = kinds.index("STOPPING")
    assert ready < stopping and "WATCHDOG" in kinds[ready:stopping]
    assert all(k != "READY" for k in kinds[stopping:])
    assert "EXTEND_TIMEOUT_USEC" in "".join(messages[stopping:])
