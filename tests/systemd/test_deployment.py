"""README's "Deployment under systemd", run verbatim on the embedded default and on
MariaDB (with the password as a systemd credential), then the admin commands as the
service user from other directories.

The README's shell block is taken from README.md itself, so the test fails when the
documented steps stop working. Two substitutions only: the checkout's path for
``/path/to/cronloop`` and an ``$EDITOR`` that adds this test's settings (a sample task
module; on MariaDB the ``database_url`` of a scratch database whose user's password is
README's ``the-password``).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.support.mariadb import admin, scratch_database
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
if [ -f /srv/test/extra.params ]; then cat /srv/test/extra.params >> "$1"; fi
"""
README_PASSWORD = "the-password"


def readme_deployment() -> str:
    """The shell block of README's "Deployment under systemd" section, as a script."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Deployment under systemd", 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "README's deployment section has no ```sh block"
    script = match.group(1)
    assert "/path/to/cronloop" in script
    return f"cd {REPO}\n" + script.replace("/path/to/cronloop", str(REPO))


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    if not Path(SYSTEM_PYTHON).exists():
        pytest.skip(f"{SYSTEM_PYTHON} is needed to build the venv the unit runs")
    with boot_sandbox([REPO]) as sb:
        sb.write("/srv/test/sd_sample.py", SAMPLE_TASKS)
        sb.write("/srv/test/editor", EDITOR, mode=0o755)
        yield sb


@pytest.fixture(params=["embedded", pytest.param("mariadb", marks=pytest.mark.mariadb)])
def database(request: pytest.FixtureRequest, sandbox: Sandbox) -> Iterator[str]:
    """What `status` names: the embedded file, or a scratch MariaDB database (its user's
    password is README's, given to the service as the credential)."""
    if request.param == "embedded":
        yield DATABASE
        return
    with scratch_database("cronloop_deploy") as db:
        user = f"cl_{uuid.uuid4().hex[:8]}"
        # a TCP client of 127.0.0.1 is either host, as the server resolves names or not
        accounts = [f"'{user}'@'{host}'" for host in ("127.0.0.1", "localhost")]
        try:
            for account in accounts:
                admin(f"CREATE USER {account} IDENTIFIED BY '{README_PASSWORD}'")
                admin(f"GRANT ALL ON `{db.name}`.* TO {account}")
            server = make_url(db.url())
            url = f"mysql://{user}@{server.host}:{server.port or 3306}/{db.name}"
            sandbox.write("/srv/test/extra.params", f"database_url = {url}\n")
            yield url
        finally:
            for account in accounts:
                admin(f"DROP USER IF EXISTS {account}")


def as_service_user(sb: Sandbox, cwd: str, *args: str) -> tuple[int, str, str]:
    """`cronloop ARGS` as the cronloop user, from `cwd`, as README's step 5 runs it
    (systemd-run, with the service's credential)."""
    result = sb.run(
        "systemd-run",
        "--quiet",
        "--wait",
        "--pipe",
        "--collect",
        "--uid=cronloop",
        "-p",
        "LoadCredential=database_password:cronloop.database_password",
        "-p",
        f"WorkingDirectory={cwd}",
        CRONLOOP,
        *args,
        check=False,
    )
    return result.returncode, result.stdout, result.stderr


def by_runuser(sb: Sandbox, cwd: str, *args: str) -> tuple[int, str, str]:
    """The same with README's `sudo -u cronloop` form (runuser: the sandbox has no sudo),
    from a login-like environment (no STATE_DIRECTORY, no CRONLOOP_PARAM_FILE)."""
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


def test_readme_deployment(sandbox: Sandbox, database: str) -> None:
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
    # README's last step: `status` as the service user
    assert f"database: {database}" in deployed.stdout and "tick" in deployed.stdout

    sb.run("install", "-d", "-o", "cronloop", "-g", "cronloop", ADMIN_DIR)
    rc, out, err = as_service_user(sb, ADMIN_DIR, "status")
    assert rc == 0, err
    assert out.splitlines()[0] == f"database: {database}"
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

    if database == DATABASE:
        # README's `sudo -u cronloop` form, from a directory of the admin's
        rc, out, err = by_runuser(sb, ADMIN_DIR, "status")
        assert rc == 0 and out.splitlines()[0] == f"database: {DATABASE}", err
        rc, out, err = by_runuser(sb, ADMIN_DIR, "pause", "tick")
        assert rc == 0 and out.startswith("tick: active -> paused"), err
        # another user cannot see into the state directory: told so, and whom to run as
        other = sb.run("runuser", "-u", "nobody", "--", CRONLOOP, "status", check=False)
        assert other.returncode == 1, other.stderr
        assert f"cannot look for the database {DATABASE}: permission denied" in other.stderr
        assert "sudo -u cronloop" in other.stderr
        modes = sb.run("stat", "-c", "%a %U %n", DATABASE, f"{DATABASE}-wal", f"{DATABASE}-shm")
        for line in modes.stdout.splitlines():
            assert line.startswith("600 cronloop "), modes.stdout
    # no stray database next to the admin
    assert sb.run("ls", "-A", ADMIN_DIR).stdout.strip() == ""

    sb.run("systemctl", "stop", "cronloop", timeout=120)
    assert sb.prop("cronloop", "Result") == "success"
