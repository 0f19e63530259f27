"""Producing (and loading back) a database dump for `tasks/backup.py`, and how the long
steps of a backup or restore learn that they must stop (`Stopper`, `run_in_thread`).

MySQL/MariaDB: the dump tool runs as a subprocess; every connection detail, the password
above all, goes into a 0600 temporary defaults file passed as `--defaults-extra-file=`
(never argv, where `ps` shows it to every user, never the environment). The tool writes
straight into a spool file on the backup directory's file system (no copy through
Python, nothing held in memory; /tmp may be a small tmpfs). SQLite: the online backup API,
in steps, so a live database keeps being written while it is copied.

Stopping: the async side checks the run's deadline every POLL_S while the dump runs, and
kills the dump tool on any way out (deadline, cancellation, error); thread work checks a
`Stopper` between steps. Callers delete what was spooled. The archive the dump goes into,
and restoring from it: `tasks/backup_archive.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import sqlite3
import tempfile
import threading
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

from sqlalchemy.engine import URL

from cronloop import Secret

T = TypeVar("T")
POLL_S = 0.1  # how often a running dump checks the deadline
THREAD_STOP_WAIT_S = 1.5  # the runner allows 2 s to unwind after a cancel
STDERR_KEEP = 16 * 1024
STDERR_WAIT_S = 5.0
SQLITE_STEP_PAGES = 4096  # 16 MiB of 4 KiB pages per step, a checkpoint between steps
SQLITE_MAX_RESTARTS = 3
CHUNK = 1 << 20
DUMP_FLAGS = (
    "--single-transaction",
    "--routines",
    "--triggers",
    "--hex-blob",
    "--default-character-set=utf8mb4",
    "--quick",
    "--no-tablespaces",
)
# A dump is data, never commands for the client: no shell escape (`\\!`, `system`), no
# file access (`source`, `tee`, LOAD DATA LOCAL INFILE). --sandbox needs MariaDB 10.5.25,
# 10.6.18, 10.11.8, 11.0.6 or later; an older client refuses the option, so nothing runs.
LOAD_FLAGS = ("--sandbox", "--local-infile=0")
MASK = "********"


class BackupError(Exception):
    """A backup or restore failed; the message is safe to log (no secrets)."""


class Aborted(Exception):
    """Thread work noticed a stop request."""


async def _no_checkpoint() -> None:
    return None


@dataclass
class Stopper:
    """How long-running steps learn they must stop: `checkpoint` (async, raises the run's
    StopRun) and `should_stop` for threads; `abort` is set when the caller is cancelled."""

    checkpoint: Callable[[], Awaitable[None]] = _no_checkpoint
    should_stop: Callable[[], bool] = lambda: False
    abort: threading.Event = field(default_factory=threading.Event)

    def check_sync(self) -> None:
        if self.abort.is_set() or self.should_stop():
            raise Aborted("stop requested")


async def run_in_thread(fn: Callable[[], T], stopper: Stopper) -> T:
    """`fn` in a worker thread; on cancellation, tell it to stop and wait (bounded) for it,
    so the caller's clean-up never races with a thread still writing the file."""
    future = asyncio.ensure_future(asyncio.to_thread(fn))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        stopper.abort.set()
        await asyncio.wait({future}, timeout=THREAD_STOP_WAIT_S)
        if future.done() and not future.cancelled():
            future.exception()  # retrieved: no "never retrieved" warning
        raise
    except Aborted:
        await stopper.checkpoint()  # raises the run's StopRun with its reason
        raise


@dataclass(frozen=True, repr=False)
class DbTarget:
    """Where the data is: kind ("mysql" | "sqlite"), name, and how to connect."""

    kind: str
    name: str
    path: str = ""  # SQLite file
    host: str = ""
    port: int | None = None
    user: str = ""
    socket: str = ""
    password: Secret | None = None

    @classmethod
    def from_url(cls, url: URL, password: Secret | None = None) -> DbTarget:
        """`password` (the database_password setting) wins over one inside the URL, as in
        cronloop.store.sql.engine.resolve_url."""
        backend = url.get_backend_name()
        if backend == "sqlite":
            if not url.database or url.database == ":memory:":
                raise BackupError("cannot back up an in-memory SQLite database")
            return cls(kind="sqlite", name="cronloop", path=url.database)
        if backend not in ("mysql", "mariadb"):
            raise BackupError(f"cannot back up a {backend!r} database (MySQL/MariaDB/SQLite)")
        if not url.database:
            raise BackupError("the database URL names no database")
        if password is None and url.password:
            password = Secret(str(url.password))
        socket = url.query.get("unix_socket", "")
        return cls(
            kind="mysql",
            name=url.database,
            host=url.host or "localhost",
            port=url.port,
            user=url.username or "",
            socket=socket if isinstance(socket, str) else socket[0],
            password=password,
        )

    def secrets(self) -> list[str]:
        """The password as given and as escaped in the defaults file (a tool may echo
        either)."""
        if self.password is None or not self.password.reveal():
            return []
        raw = self.password.reveal()
        return sorted({raw, _option_value(raw)[1:-1]}, key=len, reverse=True)


def scrub(text: str, secrets: list[str]) -> str:
    """`text` with every secret masked (tools may echo a password in an error)."""
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def _option_value(value: str) -> str:
    """A value for a MySQL option file: double-quoted (so `#` is not a comment), with the
    escapes the option-file reader understands."""
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


@contextlib.contextmanager
def defaults_file(target: DbTarget) -> Iterator[str]:
    """A 0600 `[client]` option file with the connection details; removed on exit,
    whatever happens (mkstemp creates it 0600 from the start: no window where it is
    readable)."""
    lines = ["[client]", f"user={_option_value(target.user)}"]
    if target.password is not None:
        lines.append(f"password={_option_value(target.password.reveal())}")
    if target.socket:
        lines.append(f"socket={_option_value(target.socket)}")
    else:
        # as the Python driver does: "localhost" means TCP, not the client's socket
        lines += [f"host={_option_value(target.host)}", "protocol=TCP"]
        if target.port:
            lines.append(f"port={int(target.port)}")
    fd, path = tempfile.mkstemp(prefix="cronloop-", suffix=".cnf")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def find_command(configured: str, candidates: tuple[str, ...]) -> list[str]:
    """The program and its extra arguments: `configured` (shell-like words), or the first
    candidate on PATH."""
    words = shlex.split(configured) if configured.strip() else []
    names = [words[0]] if words else list(candidates)
    for name in names:
        found = shutil.which(name)
        if found:
            return [found, *words[1:]]
    raise BackupError(f"command not found: {' or '.join(names)} (set dump_command?)")


def _child_env() -> dict[str, str]:
    """The environment minus MYSQL_PWD (a password there is visible in /proc/*/environ)."""
    return {k: v for k, v in os.environ.items() if k != "MYSQL_PWD"}


async def _read_limited(stream: asyncio.StreamReader | None) -> bytes:
    kept = bytearray()
    if stream is None:
        return b""
    while chunk := await stream.read(65536):
        if len(kept) < STDERR_KEEP:
            kept += chunk[: STDERR_KEEP - len(kept)]
    return bytes(kept)


async def _finish(proc: asyncio.subprocess.Process, stopper: Stopper) -> None:
    """Wait for the process, checking the run's deadline every POLL_S."""
    waiter = asyncio.ensure_future(proc.wait())
    try:
        while not waiter.done():
            await asyncio.wait({waiter}, timeout=POLL_S)
            if not waiter.done():
                await stopper.checkpoint()
    finally:
        if not waiter.done():
            waiter.cancel()


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(proc.wait()), THREAD_STOP_WAIT_S)


async def dump_mysql(target: DbTarget, command: list[str], dest: Path, stopper: Stopper) -> str:
    """Run the dump tool with stdout into `dest` (0600); raise BackupError on failure.
    Returns what it wrote on stderr (warnings), secrets masked."""
    with defaults_file(target) as cnf, open_new(dest) as out:
        argv = [
            command[0],
            f"--defaults-extra-file={cnf}",
            *command[1:],
            *DUMP_FLAGS,
            "--",
            target.name,
        ]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.PIPE,
                env=_child_env(),
            )
        except OSError as exc:
            raise BackupError(f"cannot start {command[0]}: {exc.strerror or exc}") from None
        return await _supervise(proc, Path(command[0]).name, target, stopper)


async def load_mysql(
    target: DbTarget, command: list[str], feed: Callable[[], bytes], stopper: Stopper
) -> None:
    """Run the mysql client on `target`, writing `feed()` chunks (b"" = end) to stdin."""
    with defaults_file(target) as cnf:
        argv = [
            command[0],
            f"--defaults-extra-file={cnf}",
            *command[1:],
            "--default-character-set=utf8mb4",
            *LOAD_FLAGS,  # last: a configured option cannot turn them off
            "--",
            target.name,
        ]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env=_child_env(),
            )
        except OSError as exc:
            raise BackupError(f"cannot start {command[0]}: {exc.strerror or exc}") from None
        pump = asyncio.ensure_future(_pump(proc, feed, stopper))
        try:
            await _supervise(proc, Path(command[0]).name, target, stopper)
        finally:
            if not pump.done():
                pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, BrokenPipeError, ConnectionResetError):
                await pump


async def _pump(
    proc: asyncio.subprocess.Process, feed: Callable[[], bytes], stopper: Stopper
) -> None:
    assert proc.stdin is not None
    try:
        while chunk := await run_in_thread(feed, stopper):
            proc.stdin.write(chunk)
            await proc.stdin.drain()
    finally:
        proc.stdin.close()


async def _supervise(
    proc: asyncio.subprocess.Process, tool: str, target: DbTarget, stopper: Stopper
) -> str:
    """Collect stderr, wait with deadline checks, kill on any way out, check the result;
    returns stderr (secrets masked)."""
    errors = asyncio.ensure_future(_read_limited(proc.stderr))
    try:
        await _finish(proc, stopper)
        # bounded: a grandchild that inherited stderr could keep it open
        done, _ = await asyncio.wait({errors}, timeout=STDERR_WAIT_S)
        stderr = errors.result() if done else b""
    finally:
        await _kill(proc)
        if not errors.done():
            errors.cancel()
    text = scrub(stderr.decode("utf-8", "replace").strip(), target.secrets())
    if proc.returncode != 0:
        shown = text if len(text) <= 4000 else text[:4000] + " [...]"
        raise BackupError(f"{tool} failed (exit {proc.returncode}): {shown or 'no message'}")
    return text


@contextlib.contextmanager
def open_new(path: Path) -> Iterator[IO[bytes]]:
    """A new file, 0600 from its creation (the dump holds every row of the database)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        yield handle


class _Restarting(Exception):
    """The source keeps changing under a stepwise copy."""


def _uri(path: str | Path, mode: str) -> str:
    return f"file:{urllib.parse.quote(str(path))}?mode={mode}"


def sqlite_copy(
    source: str, dest: Path, stopper: Stopper, step_pages: int = SQLITE_STEP_PAGES
) -> None:
    """Online backup of `source` into the new file `dest` (blocking: run it in a thread).

    In steps of `step_pages`, checking for a stop between steps. A write to the source by
    another connection restarts a stepwise copy; after SQLITE_MAX_RESTARTS restarts (a
    busy database) it is redone in one step, a single read transaction that WAL lets
    writers work beside. The copy is switched out of WAL mode: the one file is the whole
    database.
    """
    if not os.path.exists(source):
        raise BackupError(f"SQLite database {source} does not exist")
    with open_new(dest):
        pass  # created 0600 before SQLite writes into it
    seen = {"remaining": -1, "restarts": 0}

    def progress(_status: int, remaining: int, _total: int) -> None:
        stopper.check_sync()
        if remaining > seen["remaining"] >= 0:
            seen["restarts"] += 1
            if seen["restarts"] >= SQLITE_MAX_RESTARTS:
                raise _Restarting
        seen["remaining"] = remaining

    src = sqlite3.connect(_uri(source, "rw"), uri=True, timeout=30)
    try:
        dst = sqlite3.connect(dest)
        try:
            try:
                src.backup(dst, pages=step_pages, progress=progress)
            except _Restarting:
                src.backup(dst, pages=-1)
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise BackupError(f"SQLite backup of {source} failed: {exc}") from None
    finally:
        src.close()


def sqlite_restore(source: Path, dest: str) -> None:
    """Copy the database file `source` into `dest` through the backup API, which is safe
    even if `dest` exists in WAL mode (a plain file copy over it would not be)."""
    src = sqlite3.connect(_uri(source, "ro"), uri=True)
    try:
        dst = sqlite3.connect(dest, timeout=30)
        try:
            src.backup(dst)
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise BackupError(f"SQLite restore into {dest} failed: {exc}") from None
    finally:
        src.close()
