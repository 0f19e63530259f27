"""Restoring a backup archive: `restore` (the library call) and `restore_archive` (what
`cronloop restore ARCHIVE [--yes]` runs).

A restore verifies the whole archive first (`tasks/backup_archive.py`: exactly the files
its manifest lists, each a regular file, once, sizes and sha256), then says what it will
overwrite, and touches nothing unless confirmed. The archive is opened once and read
twice from the same open file, so it cannot be swapped between the check and the load,
and the dump is hashed again as it is loaded. The MariaDB client runs with `--sandbox`
and without LOCAL INFILE: a crafted dump cannot run shell commands (`\\!`, `system`) nor
read the restoring user's files. It knows nothing of taking backups (`tasks/backup.py`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from cronloop import Secret
from cronloop.standard.backup_archive import (
    check_digest,
    checked_members,
    opened,
    read_manifest_member,
    reading,
    verify_open,
)
from cronloop.standard.backup_dump import (
    CHUNK,
    BackupError,
    DbTarget,
    Stopper,
    find_command,
    load_mysql,
    run_in_thread,
    sqlite_restore,
)

CLIENT_TOOLS = ("mariadb", "mysql")
Confirm = Callable[[dict[str, Any], DbTarget], bool]


class _DumpReader:
    """The dump member of an already verified archive, read from the same open file (so
    the archive cannot be swapped between the check and the load), checked again as it
    streams: the bytes loaded are the bytes verified."""

    def __init__(self, tar: tarfile.TarFile, path: Path, dump: str, stopper: Stopper) -> None:
        self.path, self.stopper = path, stopper
        self.hasher, self.size = hashlib.sha256(), 0
        with reading(path):
            _, specs = read_manifest_member(tar, path)
            for member, spec in checked_members(tar, path, specs):
                if member.name == dump:
                    source = tar.extractfile(member)
                    assert source is not None  # a regular file: checked_members says so
                    self.spec, self.source = spec, source
                    return
        raise BackupError(f"{path}: the archive has no {dump}")  # verified: cannot happen

    def read(self) -> bytes:
        """The next chunk, b"" at the end (after checking the digest)."""
        self.stopper.check_sync()
        with reading(self.path):
            chunk = self.source.read(CHUNK)
        if chunk:
            self.hasher.update(chunk)
            self.size += len(chunk)
        else:
            check_digest(self.path, self.spec, (self.size, self.hasher.hexdigest()))
        return chunk


def _restore_sqlite(reader: _DumpReader, dest: str) -> None:
    """Extract the database file next to `dest` (same file system), then copy it in."""
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=".cronloop-restore-", dir=Path(dest).parent)
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := reader.read():
                out.write(chunk)
        sqlite_restore(Path(temp), dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


async def restore(
    archive: Path,
    target_url: str | URL,
    password: Secret | None = None,
    *,
    client_command: str = "",
    stopper: Stopper | None = None,
    confirm: Confirm | None = None,
) -> bool:
    """Restore `archive` into the database at `target_url`, after verifying it; True if
    restored, False if `confirm(manifest, target)` (asked after the verification, before
    anything is touched) said no.

    MySQL/MariaDB: the database must exist (create it empty); the tables in the dump are
    dropped and re-created, other tables are left alone. The client is `client_command`,
    else `mariadb` or `mysql` from PATH, with the password in a 0600 defaults file, run
    with `--sandbox` (a dump cannot run shell commands or read files: the client must be
    MariaDB 10.5.25, 10.6.18, 10.11.8, 11.0.6 or later) and without LOCAL INFILE.
    SQLite: `target_url` names the file, created if missing, replaced if present.
    """
    stopper = stopper or Stopper()
    try:
        url = make_url(target_url)
    except ArgumentError:
        raise BackupError("restore target: not a database URL") from None
    target = DbTarget.from_url(url, password)
    with opened(archive) as handle, contextlib.ExitStack() as stack:
        manifest = await run_in_thread(lambda: verify_open(handle, archive, stopper), stopper)
        kind, dump = manifest["database"]["kind"], str(manifest["dump"])
        if kind != target.kind:
            raise BackupError(f"{archive} holds a {kind} dump; the target is {target.kind}")
        if confirm is not None and not confirm(manifest, target):
            return False
        command = find_command(client_command, CLIENT_TOOLS) if target.kind == "mysql" else []
        handle.seek(0)  # the same open file: what is loaded is what was verified
        with reading(archive):
            tar = stack.enter_context(tarfile.open(fileobj=handle, mode="r|gz"))
        reader = await run_in_thread(lambda: _DumpReader(tar, archive, dump, stopper), stopper)
        if target.kind == "sqlite":
            await run_in_thread(lambda: _restore_sqlite(reader, target.path), stopper)
        else:
            await load_mysql(target, command, reader.read, stopper)
    return True


# -- `cronloop restore ARCHIVE [--yes]` -------------------------------------------------------


def describe_restore(archive: Path, manifest: dict[str, Any], target: DbTarget) -> str:
    """What a restore of `archive` into `target` will overwrite, for the operator."""
    source = manifest.get("database", {})
    files = [str(f.get("name")) for f in manifest.get("files", []) if isinstance(f, dict)]
    lines = [
        f"archive {archive}: verified ({len(files)} file(s): {', '.join(files)})",
        f"  taken {manifest.get('created', '?')} by cronloop {manifest.get('cronloop_version')}"
        f" from the {source.get('kind')} database {source.get('name')!r}"
        f" ({source.get('server_version', '?')})",
    ]
    if target.kind == "sqlite":
        lines.append(f"will REPLACE the SQLite database file {target.path}")
    else:
        where = target.socket or f"{target.host}:{target.port or 3306}"
        lines.append(
            f"will OVERWRITE the MariaDB/MySQL database {target.name!r} on {where}"
            f" (as {target.user or 'the default user'}): every table in the dump is dropped"
            " and re-created; other tables are left alone"
        )
    lines.append("extra files in the archive are not restored (extract them with tar if needed)")
    return "\n".join(lines)


async def restore_archive(
    archive: Path,
    target_url: str | URL,
    password: Secret | None = None,
    *,
    yes: bool,
    out: Callable[[str], None] = print,
    client_command: str = "",
    stopper: Stopper | None = None,
) -> bool:
    """`cronloop restore ARCHIVE [--yes]`: verify the archive, print what it will
    overwrite, and restore it only with `yes`. True if restored; False if not confirmed
    (nothing touched); BackupError (safe to show: no secret) if the archive is refused or
    the restore fails. `target_url`: for the command, the configured database
    (`cronloop.store.sql.engine.resolve_url(settings)`, a URL object: the password is
    never rendered into a string)."""

    def confirm(manifest: dict[str, Any], target: DbTarget) -> bool:
        out(describe_restore(archive, manifest, target))
        if not yes:
            out("nothing restored: run again with --yes to do it")
        return yes

    done = await restore(
        archive,
        target_url,
        password,
        client_command=client_command,
        stopper=stopper,
        confirm=confirm,
    )
    if done:
        out(f"restored {archive}")
    return done
