"""A real systemd to test the unit under: `shared/tools/systemd-sandbox` (see its README),
PID 1 in throw-away namespaces.

The sandbox gate mirrors the MariaDB one: a machine that cannot boot a sandbox (not
root, no cgroup2/overlayfs, no systemd installed) skips the calling test, unless
`SYSTEMD_SANDBOX_REQUIRED=1` (CI) makes that a failure, so a green run never silently
means "not tested". `SYSTEMD_SANDBOX` names the tool when it is neither on `PATH` nor in
`shared/tools/` beside the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

REPO = Path(__file__).resolve().parents[2]
# CI runs in a fresh clone with shared/ next to it, as a developer's work tree has it.
_BESIDE_REPO = REPO.parent / "shared" / "tools" / "systemd-sandbox"
SANDBOX = (
    os.environ.get("SYSTEMD_SANDBOX")
    or shutil.which("systemd-sandbox")
    or (str(_BESIDE_REPO) if _BESIDE_REPO.exists() else None)
)
# CI sets SYSTEMD_SANDBOX_REQUIRED=1: a machine that cannot boot a sandbox then fails the
# run instead of silently skipping these tests.
REQUIRED = os.environ.get("SYSTEMD_SANDBOX_REQUIRED") == "1"
EX_PREREQ = 3  # systemd-sandbox's exit status for "this machine lacks a prerequisite"
TTL_S = 1800  # the sandbox powers itself off if a killed test run never calls `down`


def _command() -> list[str]:
    assert SANDBOX is not None
    # The shared/ copy may lack the executable bit; the tool is a bash script.
    return [SANDBOX] if os.access(SANDBOX, os.X_OK) else ["bash", SANDBOX]


def _unavailable(reason: str) -> NoReturn:
    import pytest

    if REQUIRED:
        pytest.fail(f"a systemd sandbox is required but unavailable: {reason}")
    pytest.skip(f"no systemd sandbox on this machine: {reason}")


class Sandbox:
    """A running sandbox; every method runs a command inside it."""

    def __init__(self, handle: str) -> None:
        self.handle = handle

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 60, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside (as root, working directory /); output is captured."""
        result = subprocess.run(
            [*_command(), "exec", self.handle, *cmd],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kw,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)!r} exited {result.returncode} in the sandbox\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def cp(self, src: str | os.PathLike[str], dst: str) -> None:
        """Copy a host file (mode kept) or a directory's contents in; parents are created."""
        subprocess.run([*_command(), "cp", self.handle, str(src), dst], check=True, timeout=60)

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        """Create a file inside with the given content and mode."""
        self.run(
            "sh",
            "-c",
            f'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod {mode:o} "$1"',
            "sh",
            path,
            input=text,
        )

    def prop(self, unit: str, name: str) -> str:
        """One property of a unit (``systemctl show -p NAME --value``)."""
        return self.run("systemctl", "show", "-p", name, "--value", unit).stdout.strip()

    def wait_prop(
        self,
        unit: str,
        name: str,
        want: str | Callable[[str], bool],
        timeout: float = 15,
    ) -> str:
        """Poll a property until it equals ``want`` (or ``want(value)`` is true).

        Read ``NRestarts`` this way before stopping a unit: ``systemctl stop`` resets it.
        """
        check = want if callable(want) else (lambda value: value == want)
        deadline = time.monotonic() + timeout
        while True:
            value = self.prop(unit, name)
            if check(value):
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{unit} {name}={value!r} after {timeout} s, wanted {want!r}")
            time.sleep(0.2)

    def journal(self, *args: str) -> list[dict[str, Any]]:
        """Journal entries as dicts (``journalctl -o json --all``); journald is
        asynchronous, so poll for entries a service has just written."""
        out = self.run("journalctl", "--no-pager", "-o", "json", "--all", *args).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]


@contextmanager
def boot_sandbox(
    binds: Sequence[str | os.PathLike[str]] = (), *, host_net: bool = True
) -> Iterator[Sandbox]:
    """Boot a sandbox (``--host-net``: the host's MariaDB on 127.0.0.1:3306 is reachable),
    yield it, and always power it off. Skips or fails the test when it cannot boot."""
    if not SANDBOX or not os.path.isfile(SANDBOX):
        _unavailable(f"systemd-sandbox not found ({SANDBOX or 'set SYSTEMD_SANDBOX to its path'})")
    cmd = [*_command(), "up", "--ttl", str(TTL_S)]
    if host_net:
        cmd.append("--host-net")
    for path in binds:
        cmd += ["--bind", str(path)]
    up = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if up.returncode == EX_PREREQ:  # not root, no overlayfs/cgroup2/namespaces, no systemd
        _unavailable(up.stderr.strip())
    if up.returncode != 0:
        import pytest

        pytest.fail(f"systemd-sandbox up failed with status {up.returncode}:\n{up.stderr}")
    sandbox = Sandbox(up.stdout.strip())
    try:
        yield sandbox
    finally:
        subprocess.run([*_command(), "down", sandbox.handle], timeout=120, check=False)
