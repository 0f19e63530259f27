"""How the `email` task turns an outbox row into a message and delivers it.

`build_message` makes the RFC 5322 message from a decoded row (`tasks.outbox.Envelope`);
a `Connection` delivers it: `SmtpConnection` (one SMTP session reused for every message a
sender sends in a run) or `FileConnection` (`<message-id>.eml` files). Both raise
`SendError`, which says whether a failure is permanent or worth retrying; the task
decides what that means for the row (`tasks/email.py`).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any, Protocol

import aiosmtplib

from cronloop.files import private_dir
from cronloop.standard.email_headers import FILE_WRITERS, check_header_value, check_serialised
from cronloop.standard.outbox import Envelope


@dataclass(frozen=True)
class SmtpConfig:
    """Where and how to reach the SMTP server (the task's `smtp_*` options)."""

    host: str
    port: int
    tls: str  # "none" | "starttls" | "tls"
    ca_file: str  # PEM bundle to trust instead of the system's; "" = the system's
    username: str
    password: str = field(repr=False)
    timeout_s: float


class SendError(Exception):
    """A failed delivery: `permanent` (5xx to the message) or worth retrying."""

    def __init__(self, text: str, *, code: int | None = None, permanent: bool = False) -> None:
        super().__init__(text)
        self.text, self.code, self.permanent = text, code, permanent


class Connection(Protocol):
    async def send(self, message: EmailMessage, env: Envelope) -> dict[str, Any]:
        """Deliver; return refused recipients when others were accepted; raise SendError."""
        ...

    async def close(self) -> None: ...


class SmtpConnection:
    """One SMTP session, opened on first use and reused for every following message;
    dropped after a connection-level failure and reopened by the next send."""

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config
        self.client: aiosmtplib.SMTP | None = None

    async def _connected(self) -> aiosmtplib.SMTP:
        if self.client is not None and self.client.is_connected:
            return self.client
        c = self.config
        client = aiosmtplib.SMTP(
            hostname=c.host,
            port=c.port,
            timeout=c.timeout_s,
            username=c.username or None,
            password=c.password or None,
            use_tls=c.tls == "tls",
            start_tls=c.tls == "starttls",
            cert_bundle=c.ca_file or None,
        )
        try:
            await client.connect()
        except aiosmtplib.SMTPResponseException as exc:
            # A refusal at connect, EHLO or AUTH is the server's or our configuration's
            # state, not the message's fault: transient, whatever the code.
            client.close()
            raise SendError(f"connect: {exc.code} {exc.message}", code=exc.code) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            client.close()
            raise SendError(f"connect: {type(exc).__name__}: {exc}") from None
        self.client = client
        return client

    async def send(self, message: EmailMessage, env: Envelope) -> dict[str, Any]:
        client = await self._connected()
        try:
            refused, _ = await client.send_message(
                message, sender=env.envelope_from, recipients=env.envelope_to
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            text = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
            permanent = all(500 <= c < 600 for c in codes)
            raise SendError(
                text, code=max(codes) if permanent else min(codes), permanent=permanent
            ) from None
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code == 421 or not 400 <= exc.code < 600:
                self._drop()
            raise SendError(
                f"{exc.code} {exc.message}", code=exc.code, permanent=500 <= exc.code < 600
            ) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            self._drop()
            raise SendError(f"{type(exc).__name__}: {exc}") from None
        except ValueError as exc:  # an address the client refuses to put on the wire
            raise SendError(f"unsendable: {exc}", permanent=True) from None
        except asyncio.CancelledError:
            self._drop()  # mid-transaction: the session is unusable, and QUIT would wait
            raise
        return dict(refused)

    def _drop(self) -> None:
        if self.client is not None:
            self.client.close()
        self.client = None

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None and client.is_connected:
            try:
                await client.quit(timeout=min(1.0, self.config.timeout_s))
            except (aiosmtplib.SMTPException, OSError):
                client.close()


class FileConnection:
    """Writes `<message-id>.eml` files: for development, tests, or a pickup directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def send(self, message: EmailMessage, env: Envelope) -> dict[str, Any]:
        # Bcc is not a header; keep the envelope so whoever picks the file up has it.
        try:
            envelope_to = check_header_value(", ".join(env.envelope_to), "envelope recipients")
            del message["X-Cronloop-Envelope-To"]  # a resend of the same message object
            message["X-Cronloop-Envelope-To"] = envelope_to
            check_serialised(message, FILE_WRITERS)
        except ValueError as exc:
            raise SendError(f"unsendable: {exc}", permanent=True) from None
        try:
            await asyncio.to_thread(
                write_eml, self.directory, eml_name(env.message_id), message.as_bytes()
            )
        except OSError as exc:
            raise SendError(f"file: {type(exc).__name__}: {exc}") from None
        return {}

    async def close(self) -> None:
        return None


def eml_name(message_id: str) -> str:
    """A file name from the Message-ID: stable, so a resend overwrites its earlier copy."""
    core = message_id.strip().strip("<>")
    safe = re.sub(r"[^A-Za-z0-9._@+-]", "_", core)[:150].lstrip(".") or "message"
    if safe != core:  # keep two ids that sanitise alike apart
        safe += "-" + hashlib.sha256(message_id.encode()).hexdigest()[:12]
    return safe + ".eml"


def write_eml(directory: Path, name: str, data: bytes) -> Path:
    """Write atomically: a temporary file, fsync, then rename over the final name."""
    private_dir(directory)  # messages hold addresses and bodies: 0700, files 0600 (mkstemp)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".eml")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, directory / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return directory / name


def build_message(env: Envelope) -> EmailMessage:
    """RFC 5322 message; Date is the queue time so a resend is byte-identical.

    Every header value is checked here again (literally and decoded: see
    `tasks/email_headers.py`), whoever made the envelope, and the written message must
    parse back with exactly these headers; ValueError says which field is refused.
    """
    fields: list[tuple[str, str]] = [("From", env.sender)]
    if env.to:
        fields.append(("To", ", ".join(env.to)))
    if env.cc:
        fields.append(("Cc", ", ".join(env.cc)))
    if not env.to and not env.cc:
        fields.append(("To", "undisclosed-recipients:;"))
    fields += [
        ("Subject", env.subject),
        ("Date", format_datetime(env.created, usegmt=True)),
        ("Message-ID", env.message_id),
        *env.headers.items(),
    ]
    msg = EmailMessage()
    for name, value in fields:
        msg[name] = check_header_value(value, name)
        # and as the stdlib parsed it for this field (display names, groups, ...)
        check_header_value(str((msg.get_all(name) or [""])[-1]), name)
    msg.set_content(env.body_text)
    if env.body_html is not None:
        msg.add_alternative(env.body_html, subtype="html")
    check_serialised(msg)
    return msg
