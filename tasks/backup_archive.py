"""The backup archive: its name, its contents, and writing and verifying it.

`<backup_dir>/<file_name_format>.tar.gz` (mode 0600) holds `manifest.json` first (format,
cronloop version, database kind/name/server version, creation time, and each file's size
and sha256), the dump (`<db>.sql` or `cronloop.sqlite3`), then the extra files under
`extra/`. The manifest comes first so that retention can tell our archives from other
files by reading only the start of each; `verify_archive` checks the archive's structure
and every file against it before anything is loaded into a database (restoring:
`tasks/backup_restore.py`). Producing the dump itself: `tasks/backup_dump.py`; taking a
backup (locks, spool, retention): `tasks/backup.py`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

from cronloop.standard.backup_dump import CHUNK, BackupError, DbTarget, Stopper, open_new

FORMAT = "cronloop-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SUFFIX = ".tar.gz"
MAX_MANIFEST = 1 << 20
FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)  # what an archive member may be: a plain file
_TYPE_NAMES = {
    tarfile.SYMTYPE: "symbolic link",
    tarfile.LNKTYPE: "hard link",
    tarfile.DIRTYPE: "directory",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "FIFO",
    tarfile.CONTTYPE: "contiguous file",
    tarfile.GNUTYPE_SPARSE: "sparse file",
}
# What reading a malformed .tar.gz raises. TypeError: tarfile's gzip reader calls ord() on
# an empty read when the file ends inside the gzip header (found by tests/tasks/test_fuzz.py).
UNREADABLE = (
    OSError,
    EOFError,
    tarfile.TarError,
    zlib.error,
    ValueError,
    OverflowError,
    TypeError,
)
_SHA256 = re.compile(r"[0-9a-f]{64}")
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
    if first is None or first.name != MANIFEST or first.type not in FILE_TYPES:
        return None
    if first.size > MAX_MANIFEST:
        return None
    handle = tar.extractfile(first)
    try:
        data = json.loads(handle.read()) if handle else None
    except RecursionError:  # deeply nested JSON: not ours
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def read_manifest(path: Path) -> dict[str, Any] | None:
    """Our manifest if `path` is one of our archives (it is the first member), else None;
    reads only the start of the archive."""
    try:
        with tarfile.open(path, "r|gz") as tar:
            return _first_manifest(tar)
    except UNREADABLE:
        return None


# -- verifying --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileSpec:
    """One file as the manifest lists it."""

    name: str
    size: int
    sha256: str


def _kind(member: tarfile.TarInfo) -> str:
    return _TYPE_NAMES.get(member.type, f"member of unknown type {member.type!r}")


def _safe_name(name: object) -> bool:
    """A relative path of plain components: no `..`, no absolute path, no control
    character, no backslash (what extracting it anywhere could not escape from)."""
    if not isinstance(name, str) or not name or len(name) > 1024 or "\\" in name:
        return False
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name) or name.startswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def _whole(value: object) -> int | None:
    """`value` if it is a whole number (JSON true is not one), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def check_manifest(data: object, path: Path) -> tuple[dict[str, Any], dict[str, FileSpec]]:
    """The manifest and its files by name, or BackupError saying what is wrong with it."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BackupError(f"{path} is not a cronloop backup ({MANIFEST} is not ours)")
    version_ = _whole(data.get("format_version"))
    if version_ is None or version_ < 1:
        raise BackupError(f"{path}: {MANIFEST}: format_version is not valid")
    if version_ > FORMAT_VERSION:
        raise BackupError(
            f"{path} was written by a newer cronloop (format {version_}); upgrade to restore it"
        )
    db, files, dump = data.get("database"), data.get("files"), data.get("dump")
    if not isinstance(db, dict) or db.get("kind") not in ("mysql", "sqlite"):
        raise BackupError(f"{path}: {MANIFEST}: database.kind must be mysql or sqlite")
    if not isinstance(files, list) or not files:
        raise BackupError(f"{path}: {MANIFEST}: files must be a non-empty list")
    specs: dict[str, FileSpec] = {}
    for entry in files:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not _safe_name(name) or name == MANIFEST:
            raise BackupError(f"{path}: {MANIFEST} lists an unsafe file name {name!r}")
        size, sha256 = _whole(entry.get("size")), entry.get("sha256")
        if size is None or size < 0 or not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            raise BackupError(f"{path}: {MANIFEST}: {name!r} has no valid size and sha256")
        if name in specs:
            raise BackupError(f"{path}: {MANIFEST} lists {name!r} twice")
        specs[name] = FileSpec(name, size, sha256)
    if not isinstance(dump, str) or dump not in specs:
        raise BackupError(f"{path}: {MANIFEST}: the dump {dump!r} is not among its files")
    return data, specs


def read_manifest_member(
    tar: tarfile.TarFile, path: Path
) -> tuple[dict[str, Any], dict[str, FileSpec]]:
    first = tar.next()
    if first is None or first.name != MANIFEST:
        raise BackupError(f"{path} is not a cronloop backup (its first member is not {MANIFEST})")
    if first.type not in FILE_TYPES:
        raise BackupError(f"{path}: {MANIFEST} is a {_kind(first)}, not a regular file")
    if first.size > MAX_MANIFEST:
        raise BackupError(f"{path}: {MANIFEST} is too large ({first.size} bytes)")
    handle = tar.extractfile(first)
    raw = handle.read() if handle is not None else b""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise BackupError(f"{path}: {MANIFEST} is not valid JSON") from None
    return check_manifest(data, path)


def checked_members(
    tar: tarfile.TarFile, path: Path, specs: dict[str, FileSpec]
) -> Iterator[tuple[tarfile.TarInfo, FileSpec]]:
    """Every member after the manifest, each checked before it is read: listed in the
    manifest, a regular file (not a link, device, directory or unknown type, which
    tarfile would otherwise skip or hand out as a file), its size, and only once; at the
    end, none missing."""
    seen: set[str] = set()
    while (member := tar.next()) is not None:  # not `for`: that starts again at the first
        name = member.name
        spec = specs.get(name)
        if spec is None:
            why = "a path outside the archive" if not _safe_name(name) else "not in the manifest"
            raise BackupError(f"{path}: unexpected member {name!r} ({why})")
        if name in seen:
            raise BackupError(f"{path}: member {name!r} appears twice")
        if member.type not in FILE_TYPES:
            raise BackupError(f"{path}: member {name!r} is a {_kind(member)}, not a regular file")
        if member.size != spec.size:
            raise BackupError(f"{path}: {name} is damaged (its size differs from the manifest)")
        seen.add(name)
        yield member, spec
    missing = sorted(set(specs) - seen)
    if missing:
        raise BackupError(f"{path}: files listed in the manifest are missing: {missing}")


@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """Whatever a malformed archive makes tarfile, gzip, zlib or json raise becomes a
    BackupError naming the archive."""
    try:
        yield
    except UNREADABLE as exc:
        if isinstance(exc, BackupError):
            raise
        raise BackupError(f"{path}: unreadable archive: {type(exc).__name__}: {exc}") from None


def check_digest(path: Path, spec: FileSpec, got: tuple[int, str]) -> None:
    if got != (spec.size, spec.sha256):
        raise BackupError(
            f"{path}: {spec.name} is damaged (size or sha256 differs from the manifest)"
        )


def verify_open(handle: IO[bytes], path: Path, stopper: Stopper) -> dict[str, Any]:
    with reading(path), tarfile.open(fileobj=handle, mode="r|gz") as tar:
        manifest, specs = read_manifest_member(tar, path)
        for member, spec in checked_members(tar, path, specs):
            source = tar.extractfile(member)
            assert source is not None  # a regular file, checked by _members
            check_digest(path, spec, hash_copy(source, stopper))
    return manifest


def verify_archive(path: Path, stopper: Stopper) -> dict[str, Any]:
    """The manifest, after checking the archive's structure (exactly the files it lists,
    each a regular file, once, no path leading out) and every file against its size and
    sha256: nothing is loaded into a database from a damaged or crafted archive. Any
    problem is a BackupError naming the archive and the member."""
    with opened(path) as handle:
        return verify_open(handle, path, stopper)


@contextlib.contextmanager
def opened(path: Path) -> Iterator[IO[bytes]]:
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise BackupError(f"cannot open {path}: {exc.strerror or exc}") from None
    with handle:
        yield handle
