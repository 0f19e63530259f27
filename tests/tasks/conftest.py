"""Fixtures for the task tests: real in-process SMTP servers (aiosmtpd) and a TLS pair."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


@dataclass
class Received:
    peer: Any
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage


@dataclass
class SmtpHandler:
    """Records what the server got; tests steer replies and delays through attributes.

    Runs in the controller's thread; tests read the results after the run, when the
    server is idle.
    """

    delay_s: float = 0.0
    rcpt_reply: Callable[[str], str | None] | None = None
    data_reply: str | None = None
    gate: threading.Event | None = None  # when set: DATA waits until the gate opens
    data_started: threading.Event = field(default_factory=threading.Event)
    received: list[Received] = field(default_factory=list)
    peers: set[Any] = field(default_factory=set)
    active: int = 0
    max_active: int = 0
    logins: list[str] = field(default_factory=list)

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        self.peers.add(session.peer)
        return responses

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        reply = self.rcpt_reply(address) if self.rcpt_reply else None
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.data_started.set()
        try:
            if self.gate is not None:
                await asyncio.to_thread(self.gate.wait, 5)
            await asyncio.sleep(self.delay_s)
        finally:
            self.active -= 1
        if self.data_reply:
            return self.data_reply
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.received.append(
            Received(session.peer, envelope.mail_from, list(envelope.rcpt_tos), message)
        )
        return "250 2.0.0 accepted"

    def message_ids(self) -> list[str]:
        return [str(r.message["Message-ID"]) for r in self.received]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class SmtpServer:
    handler: SmtpHandler
    port: int

    def options(self, **overrides: Any) -> dict[str, Any]:
        """Email-task options pointing at this server."""
        return {
            "transport": "smtp",
            "smtp_host": "127.0.0.1",
            "smtp_port": self.port,
            "smtp_timeout_s": 5.0,
            "sender": "cronloop@test.example",
            **overrides,
        }


def _start(handler: SmtpHandler, **kwargs: Any) -> tuple[Controller, int]:
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, ready_timeout=5, **kwargs)
    controller.start()
    return controller, port


@pytest.fixture
def closed_port() -> int:
    """A local port nobody listens on."""
    return free_port()


@pytest.fixture
def smtp_password() -> str:
    """The password the AUTH servers accept for user `mailer`."""
    return PASSWORD


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    handler = SmtpHandler()
    controller, port = _start(handler)
    try:
        yield SmtpServer(handler, port)
    finally:
        if handler.gate is not None:
            handler.gate.set()
        controller.stop()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (it is its own CA)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


PASSWORD = "hunter2-Sup3r-Secret"


def _authenticator(handler: SmtpHandler) -> Callable[..., AuthResult]:
    def check(
        server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == b"mailer"
            and auth_data.password == PASSWORD.encode()
        )
        if ok:
            handler.logins.append(mechanism)
        return AuthResult(success=ok, handled=False)

    return check


@pytest.fixture
def tls_smtp_server(
    tls_files: tuple[Path, Path], request: pytest.FixtureRequest
) -> Iterator[SmtpServer]:
    """`request.param`: "starttls" or "tls"; AUTH with user `mailer` and PASSWORD."""
    cert, key = tls_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    handler = SmtpHandler()
    # aiosmtpd does not see implicit TLS as TLS, so it would hide AUTH there.
    auth = {
        "authenticator": _authenticator(handler),
        "auth_require_tls": request.param == "starttls",
    }
    if request.param == "starttls":
        controller, port = _start(handler, tls_context=context, require_starttls=True, **auth)
    else:
        controller, port = _start(handler, ssl_context=context, **auth)
    try:
        yield SmtpServer(handler, port)
    finally:
        controller.stop()


@pytest.fixture
def auth_smtp_server() -> Iterator[SmtpServer]:
    """Plain SMTP with AUTH allowed without TLS (to test that secrets stay out of logs)."""
    handler = SmtpHandler()
    controller, port = _start(
        handler, authenticator=_authenticator(handler), auth_require_tls=False
    )
    try:
        yield SmtpServer(handler, port)
    finally:
        controller.stop()
