"""Restoring (issue 10, item 6): `restore_archive` round trips on SQLite and on real
MariaDB (mariadb-dump, then the mariadb client), and crafted archives are refused with a
message naming the member; a shell escape in a dump never runs (the client is sandboxed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import sqlite3
import tarfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from cronloop.config.settings import Settings
from cronloop.standard.backup import OPTIONS, BackupError, backup_now
from cronloop.standard.backup_archive import verify_archive
from cronloop.standard.backup_dump import Stopper
from cronloop.standard.backup_restore import restore, restore_archive
from cronloop.store.sql.tables import tasks

T0 = datetime(2026, 3, 2, 22, 30, tzinfo=UTC)
DUMP = "cronloop.sqlite3"
mariadb_only = pytest.mark.parametrize(
    "db_url", [pytest.param("mariadb", marks=pytest.mark.mariadb)], indirect=True
)


# -- crafting archives ------------------------------------------------------------------------


@dataclasses.dataclass
class Entry:
    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    linkname: str = ""


def sqlite_file(tmp_path: Path, value: str) -> bytes:
    """A real SQLite database with one table holding `value`."""
    path = tmp_path / f"src-{hashlib.sha256(value.encode()).hexdigest()[:8]}.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE marker (v TEXT)")
    conn.execute("INSERT INTO marker VALUES (?)", (value,))
    conn.commit()
    conn.close()
    return path.read_bytes()


def manifest(files: list[tuple[str, bytes]], kind: str = "sqlite", dump: str = DUMP) -> bytes:
    return json.dumps(
        {
            "format": "cronloop-backup",
            "format_version": 1,
            "cronloop_version": "test",
            "created": T0.isoformat(),
            "database": {"kind": kind, "name": "cronloop", "server_version": "x"},
            "dump": dump,
            "files": [
                {"name": n, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                for n, d in files
            ],
        }
    ).encode()


def craft(path: Path, entries: list[Entry]) -> Path:
    """A .tar.gz with exactly these members, in this order, of these types."""
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type, info.linkname, info.mode = e.type, e.linkname, 0o600
            info.size = len(e.data)
            tar.addfile(info, io.BytesIO(e.data))
    return path


def good_entries(tmp_path: Path) -> tuple[bytes, list[Entry]]:
    dump = sqlite_file(tmp_path, "good")
    return dump, [Entry("manifest.json", manifest([(DUMP, dump)])), Entry(DUMP, dump)]


def exists(path: str | Path) -> bool:
    return os.path.exists(path)


def restored_value(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("SELECT v FROM marker").fetchone()[0])
    finally:
        conn.close()


# -- the command's entry point ------------------------------------------------------------------


async def all_task_rows(engine: AsyncEngine) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        return [tuple(r) for r in (await conn.execute(select(tasks).order_by(tasks.c.name)))]


@pytest.fixture
def target_url(db_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """An empty database of the backend under test to restore into (MariaDB: a scratch
    database, dropped after the test)."""
    if db_url.startswith("sqlite"):
        return f"sqlite+aiosqlite:///{tmp_path / 'restored' / 'copy.db'}"
    make: Callable[[], str] = request.getfixturevalue("scratch_database")
    return make()


@pytest.fixture
def mariadb_target(scratch_database: Callable[[], str]) -> str:
    return scratch_database()


async def test_round_trip_needs_yes_and_says_what_it_overwrites(
    engine: AsyncEngine, settings: Settings, tmp_path: Path, target_url: str
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            insert(tasks),
            [
                {"name": f"t{i}", "created": T0, "updated": T0, "next_run": T0, "last_message": "ü"}
                for i in range(5)
            ],
        )
    before = await all_task_rows(engine)
    archive = await backup_now(
        settings, engine=engine, options={**OPTIONS, "backup_dir": str(tmp_path / "b")}
    )
    target = make_url(target_url).database
    sqlite = engine.dialect.name == "sqlite"
    overwritten = f"SQLite database file {target}" if sqlite else f"database {target!r}"
    said: list[str] = []

    assert await restore_archive(archive, target_url, yes=False, out=said.append) is False

    text_said = "\n".join(said)
    assert f"archive {archive}: verified" in text_said and overwritten in text_said
    assert "nothing restored: run again with --yes" in text_said
    restored = create_async_engine(target_url)
    try:
        if sqlite:  # untouched: not even created
            assert target is not None and not exists(target)
        else:  # untouched: still empty
            async with restored.connect() as conn:
                assert await conn.run_sync(lambda c: inspect(c).get_table_names()) == []
        said.clear()
        assert await restore_archive(archive, target_url, yes=True, out=said.append) is True
        assert said[-1] == f"restored {archive}"
        assert await all_task_rows(restored) == before
    finally:
        await restored.dispose()


async def test_a_missing_archive_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BackupError, match=r"cannot open .*nope\.tar\.gz: No such file"):
        await restore_archive(tmp_path / "nope.tar.gz", f"sqlite:///{tmp_path}/x.db", yes=True)


# -- crafted archives ---------------------------------------------------------------------------


@mariadb_only
async def test_a_shell_escape_in_the_dump_never_runs(
    engine: AsyncEngine, tmp_path: Path, mariadb_target: str
) -> None:
    """The manifest is not signed: a crafted archive passes verification, so only the
    client's sandbox stands between its dump and a shell."""
    markers = [tmp_path / "escaped-bang", tmp_path / "escaped-system"]
    dump = (
        "CREATE TABLE t (a INT);\n"
        f"\\! touch {markers[0]}\n"
        f"system touch {markers[1]}\n"
        "INSERT INTO t VALUES (1);\n"
    ).encode()
    archive = craft(
        tmp_path / "evil.tar.gz",
        [
            Entry("manifest.json", manifest([("x.sql", dump)], "mysql", "x.sql")),
            Entry("x.sql", dump),
        ],
    )
    verify_archive(archive, Stopper())  # well-formed: the sandbox is what protects

    with pytest.raises(BackupError, match="sandbox"):
        await restore(archive, mariadb_target)
    assert [m for m in markers if m.exists()] == []


def symlink(name: str) -> Entry:
    return Entry(name, type=tarfile.SYMTYPE, linkname="/etc/passwd")


CRAFTED: dict[str, tuple[Callable[[bytes], list[Entry]], str]] = {
    # the dump's name on a member that is not a regular file, placed first
    "unknown type first": (
        lambda d: [Entry(DUMP, b"not sqlite", type=b"Q"), Entry(DUMP, d)],
        f"member {DUMP!r} is a member of unknown type b'Q', not a regular file",
    ),
    "symlink first": (
        lambda d: [symlink(DUMP), Entry(DUMP, d)],
        f"member {DUMP!r} is a symbolic link",
    ),
    "hard link first": (
        lambda d: [Entry(DUMP, type=tarfile.LNKTYPE, linkname="manifest.json"), Entry(DUMP, d)],
        "is a hard link",
    ),
    "directory": (lambda d: [Entry(DUMP, type=tarfile.DIRTYPE)], "is a directory"),
    "character device": (lambda d: [Entry(DUMP, type=tarfile.CHRTYPE)], "character device"),
    "block device": (lambda d: [Entry(DUMP, type=tarfile.BLKTYPE)], "block device"),
    "fifo": (lambda d: [Entry(DUMP, type=tarfile.FIFOTYPE)], "is a FIFO"),
    "contiguous file": (lambda d: [Entry(DUMP, d, type=tarfile.CONTTYPE)], "contiguous file"),
    "duplicate, same bytes": (lambda d: [Entry(DUMP, d), Entry(DUMP, d)], "appears twice"),
    "traversal member": (
        lambda d: [Entry(DUMP, d), Entry("../../outside", b"x")],
        "unexpected member '../../outside' (a path outside the archive)",
    ),
    "absolute member": (
        lambda d: [Entry(DUMP, d), Entry("/etc/cron.d/x", b"x")],
        "a path outside the archive",
    ),
    "unlisted member": (
        lambda d: [Entry(DUMP, d), Entry("extra/surprise", b"x")],
        "unexpected member 'extra/surprise' (not in the manifest)",
    ),
    "missing dump": (lambda d: [], "missing: ['cronloop.sqlite3']"),
    "damaged dump": (lambda d: [Entry(DUMP, d[:-1] + b"!")], f"{DUMP} is damaged"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
async def test_crafted_archives_are_refused_naming_the_member(tmp_path: Path, case: str) -> None:
    dump = sqlite_file(tmp_path, "good")
    build, message = CRAFTED[case]
    archive = craft(
        tmp_path / "crafted.tar.gz",
        [Entry("manifest.json", manifest([(DUMP, dump)])), *build(dump)],
    )
    target = tmp_path / "restored.db"

    with pytest.raises(BackupError, match=f"crafted.tar.gz: .*{re.escape(message)}"):
        await restore_archive(archive, f"sqlite:///{target}", yes=True, out=lambda _: None)
    assert not target.exists()  # nothing touched


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ([{"name": "../x", "size": 1, "sha256": "0" * 64}], "unsafe file name '../x'"),
        ([{"name": "/abs", "size": 1, "sha256": "0" * 64}], "unsafe file name '/abs'"),
        ([{"name": "manifest.json", "size": 1, "sha256": "0" * 64}], "unsafe file name"),
        ([{"name": DUMP, "size": "12", "sha256": "0" * 64}], "has no valid size and sha256"),
        ([{"name": DUMP, "size": True, "sha256": "0" * 64}], "has no valid size and sha256"),
        ([{"name": DUMP, "size": 1, "sha256": "0" * 63 + "\n"}], "has no valid size and sha256"),
        (["cronloop.sqlite3"], "unsafe file name None"),
        ([{"name": DUMP, "size": 1, "sha256": "0" * 64}] * 2, f"lists {DUMP!r} twice"),
        ([], "files must be a non-empty list"),
        ("all of them", "files must be a non-empty list"),
        ([{"name": "other", "size": 1, "sha256": "0" * 64}], "the dump 'cronloop.sqlite3' is not"),
    ],
)
async def test_a_malformed_manifest_is_refused_saying_why(
    tmp_path: Path, files: Any, message: str
) -> None:
    data = json.loads(manifest([]))
    data["files"] = files
    archive = craft(tmp_path / "m.tar.gz", [Entry("manifest.json", json.dumps(data).encode())])
    with pytest.raises(BackupError, match=re.escape(message)):
        await restore(archive, f"sqlite:///{tmp_path / 'r.db'}")


@pytest.mark.parametrize(
    ("first", "message"),
    [
        (symlink("manifest.json"), "manifest.json is a symbolic link, not a regular file"),
        (Entry("manifest.json", b"{", type=b"Q"), "manifest.json is a member of unknown type"),
        (Entry("manifest.json", b"[" * 100_000), "manifest.json is not valid JSON"),
        (Entry("manifest.json", b'{"format": 1}'), "is not a cronloop backup"),
        (Entry(DUMP, b"x"), "its first member is not manifest.json"),
    ],
)
async def test_a_bad_first_member_is_refused(tmp_path: Path, first: Entry, message: str) -> None:
    archive = craft(tmp_path / "f.tar.gz", [first])
    with pytest.raises(BackupError, match=re.escape(message)):
        await restore(archive, f"sqlite:///{tmp_path / 'r.db'}")


async def test_a_well_formed_crafted_archive_still_restores(tmp_path: Path) -> None:
    """The checks refuse what is malformed, not what is merely not ours."""
    _, entries = good_entries(tmp_path)
    archive = craft(tmp_path / "ok.tar.gz", entries)
    target = tmp_path / "ok.db"
    assert await restore(archive, f"sqlite:///{target}") is True
    assert restored_value(target) == "good"


@mariadb_only
async def test_the_client_runs_sandboxed_without_local_infile(
    engine: AsyncEngine, tmp_path: Path, mariadb_target: str
) -> None:
    """A plain dump still loads under the sandbox (what mariadb-dump writes is allowed)."""
    dump = b"CREATE TABLE t (a INT);\nINSERT INTO t VALUES (41), (1);\n"
    archive = craft(
        tmp_path / "plain.tar.gz",
        [
            Entry("manifest.json", manifest([("x.sql", dump)], "mysql", "x.sql")),
            Entry("x.sql", dump),
        ],
    )
    assert await restore(archive, mariadb_target) is True
    target = create_async_engine(mariadb_target)
    try:
        async with target.connect() as conn:
            assert (await conn.execute(text("SELECT SUM(a) FROM t"))).scalar() == 42
    finally:
        await target.dispose()
