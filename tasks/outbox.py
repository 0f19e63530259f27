"""The outbox: emails queued by the application, sent by the `email` task.

This replaces iTop's `email_asynchronous = 1` queue. The table is a contract with the
application, so its rules are spelled out here. The task's side: claiming and recording
rows in `tasks/outbox_claims.py`, building and delivering messages in
`tasks/email_transport.py`, the run itself in `tasks/email.py`.

Queueing. Call `queue_email(...)`: given an `AsyncSession` the row joins the caller's
transaction (the email exists only if the change that caused it commits); given an
`async_sessionmaker` it commits on its own. Or INSERT a row directly, filling at least:

    recipients  JSON text {"to": [...], "cc": [...], "bcc": [...]} (a JSON list means "to")
    subject     text without line breaks or control characters (also none RFC 2047-encoded)
    body_text   the text/plain body
    created     UTC timestamp
    planned     UTC timestamp, when to send: UTC_TIMESTAMP(6) on MariaDB; on SQLite the
                text 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC, six decimals, or it compares wrong)

and preferably message_id ('<unique@your.domain>'; when NULL the task assigns one before
the first attempt). Defaults: state 'planned', attempts 0, remaining_retries NULL (the
task's `max_retries`), sender NULL (the task's `sender`), body_html NULL, headers NULL (a
JSON object of extra headers, e.g. {"Reply-To": "..."}). A row the task cannot turn into a
message (bad JSON, no recipients, bad address, a line break or control character in any
header value, literal or RFC 2047-encoded: `tasks/email_headers.py`) becomes `error` with
`last_error` saying why; the other rows are sent.

States: `planned` -> `sending` (claimed by one worker: `owner`, `claim_token`,
`lease_until` on the database clock) -> deleted, or `sent` when `email.keep_sent_days` > 0
(kept that many days, then deleted). A transient failure (SMTP 4xx, connection error,
timeout) re-plans the row `retry_delay_s` later (doubling per attempt with
`exponential_delay`) while `remaining_retries` lasts, then `error`; a permanent refusal
(5xx to MAIL/RCPT/DATA) is `error` at once. The outbox is claimed by cronloop's one claim
of queued work (`cronloop.sql.acquire_queued`, the job queue's): a row left `sending` by a
crashed worker is taken over by the next claim once its lease expires, a strike counted
in `strikes`; the takeover that would be its `quarantine_strikes`-th (2) makes it `error`
instead (quarantined: `last_error` says so), so a message that kills its sender is not
sent forever. `attempts` counts claims that tried to send. To retry errors after fixing
the cause: UPDATE cronloop_outbox SET state='planned', remaining_retries=NULL, strikes=0
WHERE state='error' ...

Delivery is at least once: if a worker dies after the server accepted a message but
before the row was updated, the message is sent again after the lease expires. It carries
the same Message-ID, so the duplicate is detectable downstream.
"""

from __future__ import annotations

import asyncio
import email.policy
import json
import re
import socket
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parseaddr
from pathlib import Path
from typing import Any

from sqlalchemy import CheckConstraint, Column, Index, Integer, String, Table, Text, insert
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from cronloop.sql import UTCDateTime, db_now, id_column
from cronloop.standard.email_headers import check_header_value
from cronloop.standard.schema import metadata

PLANNED, SENDING, SENT, ERROR = "planned", "sending", "sent", "error"
LONG_TEXT = Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")

outbox = Table(
    "cronloop_outbox",
    metadata,
    id_column(),
    Column("message_id", String(255), unique=True),
    Column("sender", String(320)),
    Column("recipients", Text, nullable=False),
    Column("subject", Text, nullable=False),
    Column("body_text", LONG_TEXT, nullable=False),
    Column("body_html", LONG_TEXT),
    Column("headers", Text),
    Column("created", UTCDateTime(), nullable=False),
    Column("planned", UTCDateTime(), nullable=False),
    Column("state", String(16), nullable=False, server_default=PLANNED),
    Column("remaining_retries", Integer),
    Column("attempts", Integer, nullable=False, server_default="0"),
    # attempts whose sender was lost (counted at each takeover): quarantine_strikes
    Column("strikes", Integer, nullable=False, server_default="0"),
    Column("last_error", Text),
    Column("last_error_code", Integer),
    Column("last_attempt", UTCDateTime()),
    Column("sent", UTCDateTime()),
    Column("owner", String(255)),
    Column("claim_token", String(36)),
    Column("lease_until", UTCDateTime()),
    CheckConstraint("state IN ('planned', 'sending', 'sent', 'error')", name="state"),
    Index(None, "state", "planned"),
    Index(None, "state", "lease_until"),
    Index(None, "claim_token"),
    Index(None, "state", "sent"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

# Headers the task writes itself; an application may not smuggle its own.
RESERVED_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "sender",
        "return-path",
    }
)
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 ftext: printable ASCII except ':'
_MESSAGE_ID = re.compile(r"^<[\x21-\x3b\x3d\x3f-\x7e]+>$")  # no space, control or <>
_ADDR_SPEC = re.compile(r"^[\x21-\x7e]+@[A-Za-z0-9\[][A-Za-z0-9.:\[\]-]*$")


# -- addresses and headers ----------------------------------------------------------------


def check_address(text: object, field: str) -> str:
    """One address, as `user@example.org` or `Name <user@example.org>`, or ValueError.

    Parsed with the stdlib's RFC 5322 header parser: a list (`a@x, b@y`), a group, or any
    parser defect is refused rather than silently truncated. The address itself must be
    ASCII (write international domains in their `xn--` form).
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{field}: {text!r} is not an email address")
    check_header_value(text, field)  # also what display names decode to
    try:
        header = email.policy.default.header_factory("To", text.strip())
        addresses = header.addresses
        defects = header.defects
    except Exception:  # the parser raises assorted errors on garbage
        raise ValueError(f"{field}: {text!r} is not a valid email address") from None
    if len(addresses) != 1 or defects or not _ADDR_SPEC.match(addresses[0].addr_spec):
        raise ValueError(f"{field}: {text!r} is not one valid email address")
    return check_header_value(str(addresses[0]), field)


def check_addresses(value: str | Iterable[str], field: str) -> list[str]:
    """A list of addresses; a single string counts as one address (not as characters)."""
    items = [value] if isinstance(value, str) else list(value)
    return [check_address(item, field) for item in items]


def check_headers(headers: object) -> dict[str, str]:
    """Extra headers: names per RFC 5322, no line breaks, none the task writes itself."""
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise ValueError(f"headers: expected a mapping of name to value, got {headers!r}")
    checked: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            raise ValueError(f"headers: {name!r} is not a valid header name")
        if name.lower() in RESERVED_HEADERS:
            raise ValueError(f"headers: {name!r} is set by cronloop itself; use the arguments")
        checked[name] = check_header_value(value, f"headers: the value of {name!r}")
    return checked


def new_message_id(sender: str | None) -> str:
    """A unique Message-ID, made once at queue time so every resend carries the same one."""
    domain = parseaddr(sender)[1].rpartition("@")[2] if sender else ""
    return f"<{uuid.uuid4().hex}@{domain or socket.gethostname() or 'cronloop.host'}>"


# -- queueing -------------------------------------------------------------------------------


async def queue_email(
    session_or_sessionmaker: AsyncSession | async_sessionmaker[AsyncSession],
    *,
    to: str | Iterable[str],
    subject: str,
    body_text: str,
    body_html: str | None = None,
    cc: str | Iterable[str] = (),
    bcc: str | Iterable[str] = (),
    sender: str | None = None,
    headers: Mapping[str, str] | None = None,
    planned: datetime | None = None,
    max_retries: int | None = None,
) -> str:
    """Queue one email; return its Message-ID. ValueError names what is wrong.

    With an AsyncSession the row is added to the caller's open transaction and not
    committed here; with a sessionmaker it is committed before returning.
    """
    row = _queue_values(
        to=to,
        cc=cc,
        bcc=bcc,
        subject=subject,
        body_text=body_text,
        body_html=body_html,
        sender=sender,
        headers=headers,
        planned=planned,
        max_retries=max_retries,
    )
    if isinstance(session_or_sessionmaker, AsyncSession):
        await _insert(session_or_sessionmaker, row, planned)
    else:
        async with session_or_sessionmaker() as session, session.begin():
            await _insert(session, row, planned)
    return str(row["message_id"])


def _queue_values(
    *,
    to: str | Iterable[str],
    cc: str | Iterable[str],
    bcc: str | Iterable[str],
    subject: str,
    body_text: str,
    body_html: str | None,
    sender: str | None,
    headers: Mapping[str, str] | None,
    planned: datetime | None,
    max_retries: int | None,
) -> dict[str, Any]:
    recipients = {
        "to": check_addresses(to, "to"),
        "cc": check_addresses(cc, "cc"),
        "bcc": check_addresses(bcc, "bcc"),
    }
    if not any(recipients.values()):
        raise ValueError("no recipients: give at least one address in to, cc or bcc")
    check_header_value(subject, "subject")
    if not isinstance(body_text, str):
        raise ValueError("body_text: must be text")
    if body_html is not None and not isinstance(body_html, str):
        raise ValueError("body_html: must be text or None")
    if planned is not None and (not isinstance(planned, datetime) or planned.tzinfo is None):
        raise ValueError("planned: must be a timezone-aware datetime")
    if max_retries is not None and (not isinstance(max_retries, int) or max_retries < 0):
        raise ValueError("max_retries: must be a whole number >= 0")
    from_ = check_address(sender, "sender") if sender is not None else None
    return {
        "message_id": new_message_id(from_),
        "sender": from_,
        "recipients": json.dumps(recipients),
        "subject": subject,
        "body_text": body_text,
        "body_html": body_html,
        "headers": json.dumps(check_headers(headers)) if headers else None,
        "state": PLANNED,
        "remaining_retries": max_retries,
        "attempts": 0,
    }


async def _insert(session: AsyncSession, row: dict[str, Any], planned: datetime | None) -> None:
    now = db_now(session.get_bind().dialect)
    when = planned.astimezone(UTC) if planned is not None else now
    await session.execute(insert(outbox).values(**row, created=now, planned=when))


async def queue_from_cli(
    engine: AsyncEngine, *, to: list[str], subject: str, body: str, html_file: str | None
) -> str:
    """`cronloop queue-email`: queue one message for ops (a test mail, a notice)."""
    html = await asyncio.to_thread(Path(html_file).read_text, "utf-8") if html_file else None
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    return await queue_email(sessions, to=to, subject=subject, body_text=body, body_html=html)


# -- reading a row ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    """A row checked and decoded: everything needed to build and send the message."""

    message_id: str
    sender: str
    to: list[str]
    cc: list[str]
    bcc: list[str]
    subject: str
    body_text: str
    body_html: str | None
    headers: dict[str, str]
    created: datetime

    @property
    def envelope_from(self) -> str:
        return parseaddr(self.sender)[1]

    @property
    def envelope_to(self) -> list[str]:
        """Every recipient once, in order (to, cc, bcc)."""
        seen: dict[str, None] = {}
        for address in [*self.to, *self.cc, *self.bcc]:
            seen.setdefault(parseaddr(address)[1], None)
        return list(seen)


def decode_row(row: Any, default_sender: str) -> Envelope:
    """Check a claimed row; ValueError with a reason a human can act on if it is bad."""
    try:
        raw = json.loads(row.recipients or "")
    except (TypeError, ValueError):
        raise ValueError(f"recipients: not valid JSON: {str(row.recipients)[:80]!r}") from None
    if isinstance(raw, list):
        raw = {"to": raw}
    if not isinstance(raw, dict) or set(raw) - {"to", "cc", "bcc"}:
        raise ValueError('recipients: expected {"to": [...], "cc": [...], "bcc": [...]}')
    lists = {key: check_addresses(raw.get(key) or [], key) for key in ("to", "cc", "bcc")}
    if not any(lists.values()):
        raise ValueError("recipients: no address in to, cc or bcc")
    try:
        headers = json.loads(row.headers) if row.headers else {}
    except ValueError:
        raise ValueError(f"headers: not valid JSON: {str(row.headers)[:80]!r}") from None
    subject = check_header_value(row.subject or "", "subject")
    sender = check_address(row.sender or default_sender, "sender")
    message_id = (row.message_id or "").strip() or new_message_id(sender)
    if not message_id.startswith("<"):
        message_id = f"<{message_id}>"
    if not _MESSAGE_ID.match(message_id):
        raise ValueError(f"message_id: {message_id[:80]!r} is not <printable-ascii@domain>")
    return Envelope(
        message_id=message_id,
        sender=sender,
        to=lists["to"],
        cc=lists["cc"],
        bcc=lists["bcc"],
        subject=subject,
        body_text=row.body_text or "",
        body_html=row.body_html,
        headers=check_headers(headers),
        created=_timestamp(row.created),
    )


def _timestamp(value: object) -> datetime:
    """A stored UTC timestamp as returned raw by either database, or ValueError."""
    if isinstance(value, str):
        text = value
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"created: not a timestamp: {text[:40]!r}") from None
    if not isinstance(value, datetime):
        raise ValueError(f"created: not a timestamp: {value!r}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
