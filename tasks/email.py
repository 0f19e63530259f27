"""The `email` task: sends the outbox (iTop's ExecAsyncTask with `email_asynchronous = 1`).

Each run claims batches of due rows (cronloop's one claim of queued work, which also takes
over rows a crashed worker left `sending`, and quarantines those lost too often) and
sends each batch with `concurrency` parallel senders, each over its own SMTP
connection kept open for the whole run (iTop sends one at a time). Outcomes are written
in group commits fenced by the claim token. Between messages every sender passes a
checkpoint: at the deadline or on shutdown the rows not yet sent go back to `planned` at
once; a row whose send completed is always recorded first. Table contract, states and the
at-least-once rule: see `tasks/outbox.py`; the claim and record SQL is in
`tasks/outbox_claims.py`, message building and the SMTP/file transports in
`tasks/email_transport.py`.

`smtp_password` is a secret: it is never logged nor stored in `last_error`. Keep the
params file that holds it readable by the service only (mode 0600, or 0640 with the
service's group).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cronloop import StopRun, TaskContext, state_directory, task
from cronloop.sql import Acquired, supports_skip_locked
from cronloop.standard import outbox as ob
from cronloop.standard import outbox_claims as oc
from cronloop.standard.email_transport import (
    Connection,
    FileConnection,
    SendError,
    SmtpConfig,
    SmtpConnection,
    build_message,
)

MAX_DELAY_S = 30 * 86400.0
DEFAULT_OPTIONS: dict[str, Any] = {
    "transport": "file",  # "smtp" or "file": the embedded default works without a server
    "file_dir": "",  # default <state dir>/outbox-eml
    "smtp_host": "localhost",
    "smtp_port": 25,
    "smtp_tls": "none",  # "none" | "starttls" | "tls"
    "smtp_ca_file": "",  # PEM bundle to trust instead of the system's (a private CA)
    "smtp_username": "",
    "smtp_password": "",  # secret; never logged
    "smtp_timeout_s": 30.0,
    "sender": "",  # From for rows without one; default cronloop@<host name>
    "concurrency": 4,
    "batch_size": 100,
    "max_retries": 3,
    "retry_delay_s": 600.0,
    "exponential_delay": False,
    "keep_sent_days": 0.0,  # 0: delete a row once sent (iTop); else keep it as `sent`
}


@dataclass(frozen=True)
class EmailOptions:
    """The task's options, checked once per run (a bad value fails the run, saying which)."""

    transport: str
    file_dir: Path
    smtp_host: str
    smtp_port: int
    smtp_tls: str
    smtp_ca_file: str
    smtp_username: str
    smtp_password: str = field(repr=False)
    smtp_timeout_s: float
    sender: str
    concurrency: int
    batch_size: int
    max_retries: int
    retry_delay_s: float
    exponential_delay: bool
    keep_sent_days: float

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> EmailOptions:
        o = {**DEFAULT_OPTIONS, **raw}
        opts = cls(
            transport=str(o["transport"]).lower(),
            file_dir=Path(o["file_dir"]) if o["file_dir"] else state_directory() / "outbox-eml",
            smtp_host=str(o["smtp_host"]),
            smtp_port=int(o["smtp_port"]),
            smtp_tls=str(o["smtp_tls"]).lower(),
            smtp_ca_file=str(o["smtp_ca_file"]),
            smtp_username=str(o["smtp_username"]),
            smtp_password=str(o["smtp_password"]),
            smtp_timeout_s=float(o["smtp_timeout_s"]),
            sender=str(o["sender"]) or f"cronloop@{socket.gethostname()}",
            concurrency=int(o["concurrency"]),
            batch_size=int(o["batch_size"]),
            max_retries=int(o["max_retries"]),
            retry_delay_s=float(o["retry_delay_s"]),
            exponential_delay=bool(o["exponential_delay"]),
            keep_sent_days=float(o["keep_sent_days"]),
        )
        problems = [
            *(["transport must be smtp or file"] if opts.transport not in ("smtp", "file") else []),
            *(
                ["smtp_tls must be none, starttls or tls"]
                if opts.smtp_tls not in ("none", "starttls", "tls")
                else []
            ),
            *(
                [
                    f"{k} must be >= 1"
                    for k in ("concurrency", "batch_size", "smtp_port")
                    if getattr(opts, k) < 1
                ]
            ),
            *(
                [
                    f"{k} must be >= 0"
                    for k in ("max_retries", "retry_delay_s", "keep_sent_days")
                    if getattr(opts, k) < 0
                ]
            ),
            *(["smtp_timeout_s must be > 0"] if opts.smtp_timeout_s <= 0 else []),
        ]
        if problems:
            raise ValueError("email options: " + "; ".join(problems))
        ob.check_address(opts.sender, "email.sender")
        return opts

    def smtp(self) -> SmtpConfig:
        """What the SMTP transport needs, and nothing about batches or retries."""
        return SmtpConfig(
            host=self.smtp_host,
            port=self.smtp_port,
            tls=self.smtp_tls,
            ca_file=self.smtp_ca_file,
            username=self.smtp_username,
            password=self.smtp_password,
            timeout_s=self.smtp_timeout_s,
        )


def open_connection(opts: EmailOptions) -> Connection:
    if opts.transport == "smtp":
        return SmtpConnection(opts.smtp())
    return FileConnection(opts.file_dir)


def retry_delay(attempt: int, base_s: float, exponential: bool) -> float:
    """Delay after the `attempt`-th failed try (1-based): base, or base x 2^(attempt-1)."""
    if not exponential:
        return base_s
    return float(min(base_s * 2 ** min(max(attempt - 1, 0), 32), MAX_DELAY_S))


def failure_mark(row: Any, opts: EmailOptions, err: SendError) -> oc.Mark:
    """iTop's rule: retry while remaining_retries > 0, counting down; then `error`."""
    stored = row.remaining_retries
    remaining = int(stored) if stored is not None else opts.max_retries
    if err.permanent or remaining <= 0:
        return oc.Mark(row.id, ob.ERROR, remaining=max(remaining, 0), error=err.text, code=err.code)
    delay = retry_delay(row.attempts + 1, opts.retry_delay_s, opts.exponential_delay)
    return oc.Mark(
        row.id, ob.PLANNED, remaining=remaining - 1, delay_s=delay, error=err.text, code=err.code
    )


# -- one batch ----------------------------------------------------------------------------------


@dataclass
class Totals:
    sent: int = 0
    retried: int = 0
    failed: int = 0
    released: int = 0
    quarantined: int = 0  # rows whose sender was lost too often: `error` at the claim

    def count(self, mark: oc.Mark) -> None:
        if mark.state in (oc.DELETED, ob.SENT):
            self.sent += 1
        elif mark.state == ob.PLANNED:
            self.retried += 1
        else:
            self.failed += 1


class Batch:
    """Sends claimed rows with one sender per connection while a writer records outcomes
    in group commits; on any exit, records what was sent and releases what was not."""

    def __init__(
        self, ctx: TaskContext, opts: EmailOptions, token: str, rows: list[Any], totals: Totals
    ) -> None:
        self.ctx, self.opts, self.token, self.totals = ctx, opts, token, totals
        self.pending: deque[Any] = deque(rows)
        self.inflight: dict[int, Any] = {}
        self.unrecorded: list[oc.Mark] = []
        self.lock = asyncio.Lock()
        self.wake = asyncio.Event()
        self.closing = False

    async def run(self, connections: list[Connection]) -> None:
        """Raises the StopRun a sender met at its checkpoint, after cleaning up."""
        writer = asyncio.ensure_future(self._write_loop())
        try:
            stops = await asyncio.gather(*(self._sender(c) for c in connections))
        finally:
            self.closing = True
            self.wake.set()
            await asyncio.shield(self._finish(writer))
        for stop in stops:
            if stop is not None:
                raise stop

    async def _sender(self, connection: Connection) -> StopRun | None:
        while True:
            try:
                await self.ctx.checkpoint()
            except StopRun as stop:
                return stop  # the other senders finish their current message, then stop too
            if not self.pending:
                return None
            row = self.pending.popleft()
            self.inflight[row.id] = row
            mark = await self._deliver(connection, row)
            del self.inflight[row.id]
            self.totals.count(mark)
            self.unrecorded.append(mark)
            self.wake.set()

    async def _write_loop(self) -> None:
        """Senders do not wait for the database: what piles up during one commit goes
        into the next."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            if not await self._flush() and not self.closing:
                await asyncio.sleep(1.0)  # the database is failing: do not hammer it
            if self.closing:
                return

    async def _deliver(self, connection: Connection, row: Any) -> oc.Mark:
        """Never raises an Exception: a bad row or a bug marks this row, not the batch."""
        log = self.ctx.log.bind(row_id=row.id, message_id=row.message_id)
        try:
            env = ob.decode_row(row, self.opts.sender)
            message = build_message(env)
        except Exception as exc:
            log.warning("bad outbox row, marked error", reason=str(exc))
            return oc.Mark(row.id, ob.ERROR, attempted=False, error=f"bad row: {exc}")
        try:
            if row.message_id is None:
                await oc.assign_message_id(self.ctx.db, self.token, row.id, env.message_id)
            refused = await connection.send(message, env)
        except SendError as err:
            err.text = self._scrub(err.text)
            mark = failure_mark(row, self.opts, err)
            log.warning(
                "email not sent",
                code=err.code,
                error=err.text,
                retry_in_s=mark.delay_s if mark.state == ob.PLANNED else None,
            )
            return mark
        except Exception as exc:
            log.error("email send failed unexpectedly", error=self._scrub(repr(exc)))
            return failure_mark(row, self.opts, SendError(self._scrub(repr(exc))))
        if refused:
            log.warning("some recipients refused", refused={k: str(v) for k, v in refused.items()})
        log.debug("email sent")
        return oc.Mark(row.id, ob.SENT if self.opts.keep_sent_days > 0 else oc.DELETED)

    def _scrub(self, text: str) -> str:
        secret = self.opts.smtp_password
        return (text.replace(secret, "***") if secret else text)[:2000]

    async def _flush(self) -> bool:
        """Write every outcome gathered so far in one transaction; False if that failed."""
        async with self.lock:
            marks = list(self.unrecorded)
            if not marks:
                return True
            try:
                written = await oc.record(self.ctx.db, self.token, marks)
            except Exception as exc:
                self.ctx.log.error(
                    "cannot record sent emails yet", error=repr(exc), rows=[m.row_id for m in marks]
                )
                return False
            del self.unrecorded[: len(marks)]
            if written < len(marks):
                self.ctx.log.warning(
                    "claims lost before recording: another worker may resend",
                    rows=len(marks) - written,
                )
        return True

    async def _finish(self, writer: asyncio.Future[None]) -> None:
        """Record what was sent, then give back what was not (interrupted sends included:
        they may have been delivered, see the at-least-once rule)."""
        with contextlib.suppress(BaseException):
            await writer
        await self._flush()
        if self.unrecorded:
            self.ctx.log.error(
                "sent emails not recorded; they are resent when the claim expires",
                rows=[m.row_id for m in self.unrecorded],
            )
        back = [r.id for r in [*self.inflight.values(), *self.pending]]
        if back:
            try:
                self.totals.released += await oc.release(self.ctx.db, self.token, back)
            except Exception as exc:
                self.ctx.log.error(
                    "cannot release unsent emails; they are re-planned when the claim expires",
                    error=repr(exc),
                    rows=len(back),
                )


# -- the task -------------------------------------------------------------------------------


@task(name="email", every=2, timeout=60, options=DEFAULT_OPTIONS)
async def send_queued_email(ctx: TaskContext) -> str | None:
    """Send queued emails (the outbox), in parallel over reused SMTP connections."""
    opts = EmailOptions.parse(ctx.options)
    pruned = await oc.housekeeping(ctx.db, opts.keep_sent_days)
    recovered: list[Any] = []
    async with ctx.db() as session:
        skip_locked = await supports_skip_locked(session)
    owner = f"{socket.gethostname()}:{os.getpid()}:{ctx.run_id}"
    connections = [open_connection(opts) for _ in range(opts.concurrency)]
    totals = Totals()
    try:
        while True:
            await ctx.checkpoint()
            # The claim must outlive this run, including its grace and a send in flight.
            lease_s = max(ctx.time_left(), 0) + ctx.settings.grace_s + opts.smtp_timeout_s + 30
            token = str(uuid.uuid4())
            got = await oc.claim(
                ctx.db,
                owner=owner,
                token=token,
                limit=opts.batch_size,
                lease_s=lease_s,
                skip_locked=skip_locked,
                quarantine_strikes=ctx.settings.quarantine_strikes,
            )
            _report_takeovers(ctx, got, recovered)
            totals.quarantined += len(got.quarantined)
            rows = got.rows
            if not rows:
                break
            await Batch(ctx, opts, token, rows, totals).run(connections[: len(rows)])
            # Leave the rest to the next run (2 s later) rather than end at the deadline;
            # suspects held back (one per batch) are sent by the next batches.
            if (len(rows) < opts.batch_size and not got.held_back) or (
                ctx.time_left() < ctx.timeout_s / 2
            ):
                break
    finally:
        await asyncio.shield(_close_all(connections))
        if totals != Totals() or recovered or pruned:
            ctx.log.info(
                "outbox",
                sent=totals.sent,
                retried=totals.retried,
                failed=totals.failed,
                released=totals.released,
                recovered=len(recovered),
                quarantined=totals.quarantined,
                pruned=pruned,
            )
    if totals == Totals() and not recovered:
        return None
    quarantined = f", quarantined {totals.quarantined}" if totals.quarantined else ""
    return (
        f"sent {totals.sent}, retry {totals.retried}, error {totals.failed}, "
        f"released {totals.released}, recovered {len(recovered)}{quarantined}"
    )


def _report_takeovers(ctx: TaskContext, got: Acquired, recovered: list[Any]) -> None:
    """Log the rows this claim took over from a lost sender, and those it quarantined."""
    taken = [r for r in got.rows if got.took_over(oc.OUTBOX_QUEUE, r)]
    if taken:
        recovered.extend(taken)
        ctx.log.warning(
            "took over emails whose sender was lost (they may be sent twice)",
            rows=[(r.id, r.message_id, r.owner) for r in taken][:20],
            count=len(taken),
        )
    if got.quarantined:
        ctx.log.error(
            "emails quarantined (state error): their sender was lost too often",
            rows=got.quarantined[:20],
            count=len(got.quarantined),
        )


async def _close_all(connections: list[Connection]) -> None:
    await asyncio.gather(*(c.close() for c in connections), return_exceptions=True)
