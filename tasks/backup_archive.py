"""The backup archive: its name, its contents, and writing, verifying and restoring it.

`<backup_dir>/<file_name_format>.tar.gz` (mode 0600) holds `manifest.json` first (format,
cronloop version, database kind/name/server version, creation time, and each file's size
and sha256), the dump (`<db>.sql` or `cronloop.sqlite3`), then the extra files under
`extra/`. The manifest comes first so that retention can tell our archives from other
files by reading only the start of each; `restore` checks every file against it before
anything is loaded into a database. Producing the dump itself: `tasks/backup_dump.py`;
taking a backup (locks, spool, retention): `tasks/backup.py`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from cronloop.config.values import Secret
from cronloop.standard.backup_dump import (
    CHUNK,
    BackupError,
    DbTarget,
    Stopper,
    find_command,
    load_mysql,
    open_new,
    run_in_thread,
    sqlite_restore,
)

FORMAT = "cronloop-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SUFFIX = ".tar.gz"
CLIENT_TOOLS = ("mariadb", "mysql")
_DIGITS = {
    "Y": r"\d{4}",
    "y": r"\d{2}",
    "m": r"\d{2}",
    "d": r"\d{2}",
    "H": r"\d{2}",
    "I": r"\d{2}",
    "M": r"\d{2}",
    "S": r"\d{2}",
    "j": r"\d{3}",
    "%": "%",
}


@dataclass(frozen=True)
class Member:
    """One file of the archive: its name inside, where it is spooled, size and sha256."""

    arcname: str
    path: Path
    size: int
    sha256: str
    source: str | None = None  # original path of an extra file


def archive_name(name_format: str, db: str, now: datetime, tz: ZoneInfo) -> str:
    """The archive's file name: strftime in the configured zone, `__DB__` = database."""
    stamp = now.astimezone(tz).strftime(name_format)  # `__DB__` has no `%`: kept as is
    name = stamp.replace("__DB__", db) + SUFFIX
    if "/" in name or "\0" in name or name.startswith(".") or name == SUFFIX:
        raise BackupError(f"file_name_format {name_format!r} gives an unusable name {name!r}")
    return name


def archive_pattern(name_format: str, db: str) -> re.Pattern[str]:
    """Matches the names `archive_name` makes (any time, optional `-N` collision suffix)."""
    parts = []
    for token in re.split(r"(__DB__|%.)", name_format):
        if token == "__DB__":
            parts.append(re.escape(db))
        elif len(token) == 2 and token[0] == "%":
            parts.append(_DIGITS.get(token[1], ".+?"))
        else:
            parts.append(re.escape(token))
    return re.compile("".join(parts) + r"(?:-\d+)?" + re.escape(SUFFIX))


def hash_copy(source: IO[bytes], stopper: Stopper, out: IO[bytes] | None = None) -> tuple[int, str]:
    """(size, sha256 hex) of what `source` yields, copied into `out` if given, checking
    for a stop between chunks."""
    hasher = hashlib.sha256()
    size = 0
    while chunk := source.read(CHUNK):
        stopper.check_sync()
        hasher.update(chunk)
        if out is not None:
            out.write(chunk)
        size += len(chunk)
    return size, hasher.hexdigest()


def digest(path: Path, stopper: Stopper) -> tuple[int, str]:
    """(size, sha256 hex) of a file, checking for a stop between chunks."""
    with path.open("rb") as handle:
        return hash_copy(handle, stopper)


def copy_hashed(source: Path, dest: Path, stopper: Stopper) -> tuple[int, str]:
    """Snapshot `source` into `dest` (0600) and hash the copy in the same pass, so the
    manifest describes exactly the bytes archived even if the original changes."""
    with source.open("rb") as src, open_new(dest) as out:
        return hash_copy(src, stopper, out)


def build_manifest(target: DbTarget, server: str, now: datetime, members: list[Member]) -> bytes:
    """The manifest of an archive of `members` (the dump first) taken at `now`."""
    try:
        ours = version("cronloop")
    except PackageNotFoundError:
        ours = "unknown"
    data = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "cronloop_version": ours,
        "created": now.astimezone(UTC).isoformat(),
        "database": {"kind": target.kind, "name": target.name, "server_version": server},
        "dump": members[0].arcname,
        "files": [
            {
                "name": m.arcname,
                "size": m.size,
                "sha256": m.sha256,
                **({"source": m.source} if m.source else {}),
            }
            for m in members
        ],
    }
    return json.dumps(data, indent=2).encode() + b"\n"


class _CheckedReader:
    """A file that checks for a stop request at every read (tarfile reads in CHUNKs)."""

    def __init__(self, handle: IO[bytes], stopper: Stopper) -> None:
        self._handle, self._stopper = handle, stopper

    def read(self, size: int = -1) -> bytes:
        self._stopper.check_sync()
        return self._handle.read(size)


def _tarinfo(name: str, size: int, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o600
    return info


def write_archive(
    partial: Path,
    final: Path,
    manifest: bytes,
    members: list[Member],
    mtime: float,
    stopper: Stopper,
) -> int:
    """Write the .tar.gz (manifest first: retention reads only the first member), fsync
    it and publish it as `final`; returns its size. Once complete, it is published even if
    a stop was asked meanwhile: a finished backup is worth keeping."""
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as raw:
        with tarfile.open(
            fileobj=raw, mode="w:gz", compresslevel=6, format=tarfile.PAX_FORMAT
        ) as tar:
            tar.addfile(_tarinfo(MANIFEST, len(manifest), mtime), io.BytesIO(manifest))
            for m in members:
                with m.path.open("rb") as handle:
                    tar.addfile(_tarinfo(m.arcname, m.size, mtime), _CheckedReader(handle, stopper))
        raw.flush()
        os.fsync(raw.fileno())
        size = os.fstat(raw.fileno()).st_size
    _publish(partial, final)
    return size


def _publish(partial: Path, final: Path) -> None:
    """Rename into place and fsync the directory, so the name survives a power cut."""
    os.rename(partial, final)
    dir_fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _first_manifest(tar: tarfile.TarFile) -> dict[str, Any] | None:
    first = tar.next()
    if first is None or first.name != MANIFEST or not first.isfile() or first.size > 1 << 20:
        return None
    handle = tar.extractfile(first)
    data = json.loads(handle.read()) if handle else None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def read_manifest(path: Path) -> dict[str, Any] | None:
    """Our manifest if `path` is one of our archives (it is the first member), else None;
    reads only the start of the archive."""
    try:
        with tarfile.open(path, "r|gz") as tar:
            return _first_manifest(tar)
    except (OSError, EOFError, tarfile.TarError, zlib.error, ValueError):
        return None


def verify_archive(path: Path, stopper: Stopper) -> dict[str, Any]:
    """The manifest, after checking every file it lists against its size and sha256:
    nothing is loaded into a database from a damaged archive."""
    seen: set[str] = set()
    try:
        with tarfile.open(path, "r|gz") as tar:
            manifest = _first_manifest(tar)
            if manifest is None:
                raise BackupError(f"{path} is not a cronloop backup (no manifest)")
            if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
                raise BackupError(
                    f"{path} was written by a newer cronloop (format "
                    f"{manifest.get('format_version')}); upgrade to restore it"
                )
            expected = {str(f["name"]): f for f in manifest["files"]}
            for member in tar:
                spec = expected.get(member.name)
                handle = tar.extractfile(member) if spec and member.isfile() else None
                if spec is None or handle is None:
                    continue
                size, sha256 = hash_copy(handle, stopper)
                if size != spec["size"] or sha256 != spec["sha256"]:
                    raise BackupError(
                        f"{path}: {member.name} is damaged (size or sha256 "
                        "differs from the manifest)"
                    )
                seen.add(member.name)
    except (OSError, EOFError, tarfile.TarError, zlib.error, KeyError, ValueError) as exc:
        raise BackupError(f"{path}: unreadable archive: {exc}") from None
    missing = sorted(set(expected) - seen)
    if missing:
        raise BackupError(f"{path}: files listed in the manifest are missing: {missing}")
    return manifest


def _open_member(tar: tarfile.TarFile, name: str) -> IO[bytes]:
    for member in tar:
        if member.name == name:
            handle = tar.extractfile(member)
            if handle is not None:
                return handle
    raise BackupError(f"the archive has no {name}")


def _restore_sqlite(archive: Path, dump: str, dest: str, stopper: Stopper) -> None:
    """Extract the database file next to `dest` (same file system), then copy it in."""
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=".cronloop-restore-", dir=Path(dest).parent)
    try:
        with os.fdopen(fd, "wb") as out, tarfile.open(archive, "r|gz") as tar:
            source = _open_member(tar, dump)
            while chunk := source.read(CHUNK):
                stopper.check_sync()
                out.write(chunk)
        sqlite_restore(Path(temp), dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


async def restore(
    archive: Path,
    target_url: str,
    password: Secret | None = None,
    *,
    client_command: str = "",
    stopper: Stopper | None = None,
) -> None:
    """Restore `archive` into the database at `target_url`, after verifying it.

    MySQL/MariaDB: the database must exist (create it empty); the tables in the dump are
    dropped and re-created, other tables are left alone. The client is `client_command`,
    else `mariadb` or `mysql` from PATH, with the password in a 0600 defaults file.
    SQLite: `target_url` names the file, created if missing, replaced if present.
    """
    stopper = stopper or Stopper()
    try:
        url = make_url(target_url)
    except ArgumentError:
        raise BackupError("restore target: not a database URL") from None
    target = DbTarget.from_url(url, password)
    manifest = await run_in_thread(lambda: verify_archive(archive, stopper), stopper)
    kind, dump = manifest["database"]["kind"], str(manifest["dump"])
    if kind != target.kind:
        raise BackupError(f"{archive} holds a {kind} dump; the target is {target.kind}")
    if target.kind == "sqlite":
        await run_in_thread(lambda: _restore_sqlite(archive, dump, target.path, stopper), stopper)
        return
    command = find_command(client_command, CLIENT_TOOLS)
    with tarfile.open(archive, "r|gz") as tar:
        source = await run_in_thread(lambda: _open_member(tar, dump), stopper)
        await load_mysql(target, command, lambda: source.read(CHUNK), stopper)
