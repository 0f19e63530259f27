"""The shipped unit under a real systemd: READY, planned restarts, journal fields, reload,
configuration errors, clean stop.

cronloop is installed, as in production, into a virtualenv made from the system Python
and mounted at /opt/cronloop (the unit's ExecStart); the user and directories come from
the shipped sysusers.d and tmpfiles.d files.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.sandbox import REPO, Sandbox, boot_sandbox

SYSTEM_PYTHON = "/usr/bin/python3"
PARAMS = "/etc/cronloop/cronloop.params"
SAMPLE_TASKS = """
from cronloop import task

@task(every=0.5, timeout=5)
async def tick(ctx):
    await ctx.checkpoint()
    return "tick"

@task(every=3600)
async def boom(ctx):
    raise RuntimeError("boom\\nwith a second line")
"""
BASE_PARAMS = (
    "task_modules = sd_sample\nmax_lifetime = 4\nlifetime_jitter_s = 0\npoll_interval = 0.5\n"
)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    if not Path(SYSTEM_PYTHON).exists():
        pytest.skip(f"{SYSTEM_PYTHON} is needed to build the venv the unit runs")
    # the repository is bound in: it may live under /tmp, which is private in the sandbox
    with boot_sandbox([REPO]) as sb:
        # a venv's scripts name their interpreter by absolute path: build it where it runs
        sb.run(SYSTEM_PYTHON, "-m", "venv", "/opt/cronloop", timeout=120)
        sb.run("/opt/cronloop/bin/pip", "install", "-q", str(REPO), timeout=600)
        site = sb.run(
            "/opt/cronloop/bin/python",
            "-c",
            "import sysconfig; print(sysconfig.get_path('purelib'))",
        )
        sb.write(f"{site.stdout.strip()}/sd_sample.py", SAMPLE_TASKS)
        sb.cp(REPO / "systemd/cronloop.service", "/etc/systemd/system/cronloop.service")
        sb.cp(REPO / "systemd/cronloop.sysusers", "/etc/sysusers.d/cronloop.conf")
        sb.cp(REPO / "systemd/cronloop.tmpfiles", "/etc/tmpfiles.d/cronloop.conf")
        sb.run("systemd-sysusers", "/etc/sysusers.d/cronloop.conf")
        sb.run("systemd-tmpfiles", "--create", "/etc/tmpfiles.d/cronloop.conf")
        write_params(sb, BASE_PARAMS)
        sb.run("systemctl", "daemon-reload")
        yield sb


def write_params(sb: Sandbox, text: str) -> None:
    sb.write(PARAMS, text, mode=0o640)
    sb.run("chown", "root:cronloop", PARAMS)


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def entries(sb: Sandbox, *match: str) -> list[dict[str, Any]]:
    return sb.journal("-u", "cronloop", *match)


def test_unit_ready_restarts_logs_fields_reloads_and_stops(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.run("systemctl", "start", "cronloop", timeout=120)  # Type=notify: returns on READY=1
    assert sb.prop("cronloop", "ActiveState") == "active"
    assert "last poll" in sb.wait_prop("cronloop", "StatusText", lambda v: "last poll" in v)

    # the planned lifetime exit (75) is restarted and not counted as a failure
    sb.wait_prop("cronloop", "NRestarts", lambda v: int(v) >= 1, timeout=40)
    assert sb.prop("cronloop", "ActiveState") in ("active", "activating")

    # every run is one journal entry with indexed fields
    runs = wait_for(
        "TASK=tick runs in the journal", lambda: entries(sb, "TASK=tick", "OUTCOME=success")
    )
    run = runs[-1]
    assert run["SYSLOG_IDENTIFIER"] == "cronloop" and run["PRIORITY"] == "6"
    assert (
        run["RUN_ID"]
        and float(run["DURATION_MS"]) >= 0
        and run["MESSAGE"].startswith("run finished")
    )
    # a traceback is one entry, at error priority, not one entry per line
    failed = wait_for("the traceback", lambda: entries(sb, "TASK=boom", "-p", "err"))
    tracebacks = [e for e in failed if "Traceback" in e["MESSAGE"]]
    assert len(tracebacks) >= 1 and "RuntimeError: boom" in tracebacks[0]["MESSAGE"]
    assert "EXCEPTION" in tracebacks[0]

    # ops read the status as the service user while it runs
    status = sb.run(
        "runuser",
        "-u",
        "cronloop",
        "--",
        "env",
        f"CRONLOOP_PARAM_FILE={PARAMS}",
        "STATE_DIRECTORY=/var/lib/cronloop",
        "/opt/cronloop/bin/cronloop",
        "status",
    )
    assert "tick" in status.stdout and "Nb Run" in status.stdout

    # reload: a valid change is applied, an invalid one rejected, the service stays up
    write_params(sb, BASE_PARAMS.replace("poll_interval = 0.5", "poll_interval = 0.25"))
    sb.run("systemctl", "reload", "cronloop")
    wait_for(
        "the reload", lambda: [e for e in entries(sb) if "configuration reloaded" in e["MESSAGE"]]
    )
    write_params(sb, BASE_PARAMS + "poll_interval = banana\n")
    sb.run("systemctl", "reload", "cronloop")
    wait_for("the rejection", lambda: [e for e in entries(sb) if "reload rejected" in e["MESSAGE"]])
    assert sb.prop("cronloop", "ActiveState") == "active"

    sb.run("systemctl", "stop", "cronloop", timeout=120)
    assert sb.prop("cronloop", "ActiveState") == "inactive"
    assert sb.prop("cronloop", "Result") == "success"


def test_a_configuration_error_is_not_restarted(sandbox: Sandbox) -> None:
    sb = sandbox
    write_params(sb, BASE_PARAMS + "no_such_setting = 1\n")
    sb.run("systemctl", "start", "cronloop", check=False, timeout=120)
    sb.wait_prop("cronloop", "ActiveState", "failed", timeout=30)
    assert sb.prop("cronloop", "ExecMainStatus") == "78"
    time.sleep(3)  # RestartSec=2: a restart would have happened by now
    assert sb.prop("cronloop", "NRestarts") == "0"
    logged = entries(sb)
    assert any("no_such_setting" in e["MESSAGE"] for e in logged)
