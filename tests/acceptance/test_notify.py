"""sd_notify from a real `cronloop run`: the test binds the datagram socket systemd would."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

CRONLOOP = str(Path(sys.executable).parent / "cronloop")
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
            **os.environ,
            "NOTIFY_SOCKET": address,
            "WATCHDOG_USEC": "400000",  # ping every 0.2 s
            "STATE_DIRECTORY": str(tmp_path),
            "PYTHONPATH": str(tmp_path),
            "CRONLOOP_ALLOW_ROOT": "1",
            "CRONLOOP_PARAM_FILE": "",
        }
        env.pop("WATCHDOG_PID", None)
        args = [
            "run",
            "--task_modules=notify_tasks",
            "--max_lifetime=2",
            "--lifetime_jitter_s=0",
            "--poll_interval=0.5",
        ]
        proc = subprocess.Popen([CRONLOOP, *args], env=env, stderr=subprocess.PIPE)
        try:
            messages = _collect(sock, proc, limit_s=30)
            code = proc.wait(timeout=30)
        finally:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert code == 75, stderr
    kinds = [m.split("\n")[0].split("=")[0] for m in messages]
    assert "EXTEND_TIMEOUT_USEC" in kinds[0]  # start-up may take long: systemd is told first
    ready = kinds.index("READY")
    assert kinds.count("WATCHDOG") >= 4, kinds
    assert any(k == "STATUS" and "running" in m for k, m in zip(kinds, messages, strict=True))
    stopping = kinds.index("STOPPING")
    assert ready < stopping and "WATCHDOG" in kinds[ready:stopping]
    assert all(k != "READY" for k in kinds[stopping:])
    assert "EXTEND_TIMEOUT_USEC" in "".join(messages[stopping:])
