"""The ``systemd_sandbox`` fixture: a real systemd (PID 1 in throw-away namespaces) per test.

Built on ``tests.support.sandbox`` (``shared/tools/systemd-sandbox``). A machine that
cannot boot one (not root, no cgroup2/overlayfs, no systemd installed) skips these tests,
unless
``SYSTEMD_SANDBOX_REQUIRED=1`` (CI) makes that a failure, so a green run never silently
means "not tested". Every test in this directory is marked ``systemd``.

Typical use::

    def test_unit(systemd_sandbox, tmp_path):
        sb = systemd_sandbox
        sb.cp(REPO / "systemd/cronloop.service", "/etc/systemd/system/cronloop.service")
        sb.run("systemctl", "daemon-reload")
        sb.run("systemctl", "start", "cronloop")        # Type=notify: waits for READY=1
        sb.wait_prop("cronloop", "NRestarts", lambda v: int(v) >= 1)
        entries = sb.journal("-u", "cronloop", "TASK=backup")

``tmp_path`` is bound into the sandbox at the same path (the sandbox's /tmp is private).
For a sandbox shared by several tests (building a venv inside takes a while), use
``tests.support.sandbox.boot_sandbox()`` in a fixture of a wider scope.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.sandbox import Sandbox, boot_sandbox

HERE = Path(__file__).resolve().parent


@pytest.fixture
def systemd_sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    """A fresh sandbox for one test, with ``tmp_path`` bound in at the same path."""
    with boot_sandbox([tmp_path]) as sandbox:
        yield sandbox


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/systemd/ as ``systemd`` (``-m "not systemd"`` skips them)."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.systemd)
