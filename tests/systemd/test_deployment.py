"""README's "Deployment under systemd", run verbatim on the embedded default, then the
admin commands as the service user from other directories.

The README's shell block is taken from README.md itself, so the test fails when the
documented steps stop working. Three substitutions only: the checkout's path for
``/path/to/cronloop``, ``runuser -u cronloop --`` for ``sudo -u cronloop`` (the sandbox
has no sudo) and an ``$EDITOR`` that adds this test's settings (a sample task module).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.sandbox import REPO, Sandbox, boot_sandbox

SYSTEM_PYTHON = "/usr/bin/python3"
CRONLOOP = "/opt/cronloop/bin/cronloop"
DATABASE = "/var/lib/cronloop/cronloop.db"
ADMIN_DIR = "/srv/admin"
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SAMPLE_TASKS = """
from cronloop import task

@task(every=0.5, timeout=5)
async def tick(ctx):
    return "tick"

@task(every=3600)
async def hourly(ctx):
    return "hourly"
"""
EDITOR = """#!/bin/sh
set -e
site=$(/opt/cronloop/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
cp /srv/test/sd_sample.py "$site/sd_sample.py"
printf 'task_modules = sd_sample\\npoll_interval = 0.5\\nemail.enabled = 0\\n' >> "$1"
"""


def readme_deployment() -> str:
    """The shell block of README's "Deployment under systemd" section, as a script."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Deployment under systemd", 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "README's deployment section has no ```sh block"
    script = match.group(1)
    assert "/path/to/cronloop" in script and "sudo -u cronloop" in script
    script = script.replace("/path/to/cronloop", str(REPO))
    return f"cd {REPO}\n" + script.replace("sudo -u cronloop", "runuser -u cronloop --")


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    if not Path(SYSTEM_PYTHON).exists():
        pytest.skip(f"{SYSTEM_PYTHON} is needed to build the venv the unit runs")
    with boot_sandbox([REPO]) as sb:
        sb.write("/srv/test/sd_sample.py", SAMPLE_TASKS)
        sb.write("/srv/test/editor", EDITOR, mode=0o755)
        yield sb


def as_service_user(sb: Sandbox, cwd: str, *args: str) -> tuple[int, str, str]:
    """`cronloop ARGS` as the cronloop user, from `cwd`, with a login-like environment
    (no STATE_DIRECTORY, no CRONLOOP_PARAM_FILE)."""
    result = sb.run(
        "runuser",
        "-u",
        "cronloop",
        "--",
        "sh",
        "-c",
        'cd "$0" && exec env -u STATE_DIRECTORY -u CRONLOOP_PARAM_FILE "$@"',
        cwd,
        CRONLOOP,
        *args,
        check=False,
    )
    return result.returncode, result.stdout, result.stderr


def runs_of(sb: Sandbox, task: str) -> int:
    rc, out, err = as_service_user(sb, ADMIN_DIR, "status")
    assert rc == 0, err
    row = next(line for line in out.splitlines() if line.startswith(task))
    return int(row.split("|")[4])


def test_readme_deployment_on_the_embedded_default(sandbox: Sandbox) -> None:
    sb = sandbox
    # a root shell's PATH: `python3` is the system one, not the test runner's pyenv
    deployed = sb.run(
        "env",
        f"PATH={ROOT_PATH}",
        "EDITOR=/srv/test/editor",
        "sh",
        "-ex",
        "-c",
        readme_deployment(),
        timeout=900,
    )
    assert sb.prop("cronloop", "ActiveState") == "active"
    # README's last step, `status` as the service user from root's directory
    assert f"database: {DATABASE}" in deployed.stdout and "tick" in deployed.stdout

    sb.run("install", "-d", "-o", "cronloop", "-g", "cronloop", ADMIN_DIR)
    rc, out, err = as_service_user(sb, ADMIN_DIR, "status")
    assert rc == 0, err
    assert out.splitlines()[0] == f"database: {DATABASE}"
    assert "hourly" in out

    rc, out, err = as_service_user(sb, ADMIN_DIR, "pause", "hourly")
    assert rc == 0 and out.startswith("hourly: active -> paused"), err
    assert "| paused" in next(
        line for line in as_service_user(sb, "/", "status")[1].splitlines() if "hourly" in line
    )
    rc, out, err = as_service_user(sb, "/", "resume", "hourly")
    assert (rc, out.strip()) == (0, "hourly: paused -> active"), err
    before = runs_of(sb, "hourly")
    rc, _, err = as_service_user(sb, ADMIN_DIR, "trigger", "hourly")
    assert rc == 0, err
    deadline = time.monotonic() + 20
    while runs_of(sb, "hourly") <= before:  # the service ran it, in its own database
        assert time.monotonic() < deadline, "the triggered run never happened"
        time.sleep(0.3)

    rc, _, err = as_service_user(sb, ADMIN_DIR, "trigger", "nosuch")
    assert rc == 1 and "no task named 'nosuch'" in err
    # no stray database next to the admin
    assert sb.run("ls", "-A", ADMIN_DIR).stdout.strip() == ""
    modes = sb.run("stat", "-c", "%a %U %n", DATABASE, f"{DATABASE}-wal", f"{DATABASE}-shm")
    for line in modes.stdout.splitlines():
        assert line.startswith("600 cronloop "), modes.stdout

    sb.run("systemctl", "stop", "cronloop", timeout=120)
    assert sb.prop("cronloop", "Result") == "success"
