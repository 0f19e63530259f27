"""A worker's HTTP endpoints, called from the outside with the standard library.

`free_port` finds a port to give `http_listen`; `call` makes one request over TCP or a
unix socket and returns status, headers and body; `browser_gate` says whether the
headless-Chromium tests can run (Debian's `chromium` and `chromium-driver`) and fails
instead of skipping under `CRONLOOP_REQUIRE_BROWSER=1`.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
from dataclasses import dataclass
from typing import Any

CALL_TIMEOUT_S = 10.0
CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")


def free_port() -> int:
    """A TCP port nobody listens on now (the kernel's pick; the worker binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self) -> Any:
        return json.loads(self.body)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.path)
        self.sock = sock


def call(
    listen: str,
    method: str,
    path: str,
    *,
    token: str | None = None,
    timeout: float = CALL_TIMEOUT_S,
) -> Reply:
    """One request to a worker listening on `listen` (its `http_listen` value)."""
    if listen.startswith("unix:"):
        conn: http.client.HTTPConnection = _UnixConnection(listen[len("unix:") :], timeout)
    else:
        host, _, port = listen.rpartition(":")
        conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    try:
        conn.request(method, path, headers=headers)
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def browser_gate() -> tuple[str, str] | str:
    """(chromium, chromedriver) paths, or why the browser tests cannot run."""
    chromium = next((p for p in CHROMIUM if os.access(p, os.X_OK)), shutil.which("chromium"))
    driver = next((p for p in CHROMEDRIVER if os.access(p, os.X_OK)), shutil.which("chromedriver"))
    if chromium and driver:
        try:
            import selenium  # noqa: F401
        except ImportError:
            return "selenium is not installed (pip install -e '.[test]')"
        return chromium, driver
    return "no chromium / chromedriver (apt-get install chromium chromium-driver)"


def browser_required() -> bool:
    return os.environ.get("CRONLOOP_REQUIRE_BROWSER") == "1"
