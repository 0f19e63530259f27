"""Backups on SQLite and on real MariaDB with the real mariadb-dump: round trip through
restore, secrets, failures and interruptions that leave nothing, locks, retention."""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import io
import json
import os
import sqlite3
import stat
import tarfile
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, insert, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from cronloop import StopReason, StopRun
from cronloop.config.params import ParamValue
from cronloop.config.settings import Settings
from cronloop.config.values import Secret
from cronloop.standard.attachments import draft_attachments, export_results
from cronloop.standard.backup import (
    BUSY,
    BackupBusy,
    BackupError,
    BackupPlan,
    backup,
    backup_now,
    options_from_settings,
    read_manifest,
    restore,
    run_backup,
)
from cronloop.standard.backup_archive import archive_name, archive_pattern
from cronloop.standard.backup_dump import DbTarget, Stopper, sqlite_copy
from cronloop.store.sql.tables import runs, tasks
from cronloop.testing import make_context, options_of, stop_after_checkpoints
from tests.support.mariadb import MYSQL_URL

T0 = datetime(2026, 3, 2, 22, 30, tzinfo=UTC)
# quote, hash, backslash, space, shell characters (non-ASCII would not work: PyMySQL sends
# the password as Latin-1, the mariadb tools as UTF-8, so no password suits both)
TRICKY = "p@ss w\"o#rd\\x';$`"

mariadb_only = pytest.mark.parametrize(
    "db_url", [pytest.param("mariadb", marks=pytest.mark.mariadb)], indirect=True
)
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def server_url(database: str | None, **kw: Any) -> str:
    url = make_url(MYSQL_URL).set(drivername="mysql+aiomysql", database=database, **kw)
    return url.render_as_string(hide_password=False)


async def admin(sql: str, *params: Any) -> None:
    """Run one statement as the server's admin; write `%` as `%%` (pyformat)."""
    engine = create_async_engine(server_url(None))
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(sql, params or None)
    finally:
        await engine.dispose()


@pytest.fixture
async def db(engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    """The migrated, empty database with known rows in the core tables and ours, including
    binary data with NUL bytes and 4-byte UTF-8 (what --hex-blob and utf8mb4 are for)."""
    async with engine.begin() as conn:
        now = T0
        await conn.execute(
            insert(tasks),
            [
                {
                    "name": f"task{i}",
                    "created": now,
                    "updated": now,
                    "next_run": now,
                    "last_message": f"ok 🚀 'quoted' \\ line\nbreak {i}",
                }
                for i in range(25)
            ],
        )
        await conn.execute(
            insert(runs),
            [
                {
                    "run_id": str(uuid.uuid4()),
                    "task_name": "task1",
                    "scheduled_for": now,
                    "started": now + timedelta(microseconds=i),
                    "outcome": "success",
                    "worker": "w",
                }
                for i in range(30)
            ],
        )
        blob = bytes(range(256)) * 3
        value: Any = blob if conn.dialect.name == "sqlite" else func.unhex(blob.hex())
        await conn.execute(
            insert(draft_attachments).values(
                kind="attachment",
                file_name="naïve 😀.bin",
                contents=value,
                size=len(blob),
                created=now,
                expire=now,
            )
        )
        await conn.execute(insert(export_results).values(token="t1", created=now))
    yield engine


async def all_rows(engine: AsyncEngine) -> dict[str, list[tuple[Any, ...]]]:
    """Every cronloop_ table's rows in a stable order."""
    async with engine.connect() as conn:
        names = await conn.run_sync(lambda c: inspect(c).get_table_names())
        rows = {}
        for name in sorted(n for n in names if n.startswith("cronloop_")):
            result = await conn.execute(text(f"SELECT * FROM {name} ORDER BY 1"))
            rows[name] = [tuple(r) for r in result.all()]
    return rows


@pytest.fixture
def restore_target(db_url: str, tmp_path: Path) -> Iterator[str]:
    """An empty scratch database of the same kind, dropped at the end."""
    if db_url.startswith("sqlite"):
        yield f"sqlite+aiosqlite:///{tmp_path / 'restored' / 'copy.db'}"
        return
    name = f"cronloop_r_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    asyncio.run(admin(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    try:
        yield server_url(name)
    finally:
        asyncio.run(admin(f"DROP DATABASE IF EXISTS `{name}`"))


def read_cnf(path: str) -> tuple[int, str]:
    return stat.S_IMODE(os.stat(path).st_mode), Path(path).read_text(encoding="utf-8")


def exists(path: str | Path) -> bool:
    return os.path.exists(path)


def archives(directory: Path, glob: str = "*.tar.gz") -> list[Path]:
    return sorted(directory.glob(glob))


def spooled_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob(".cronloop-backup-*/*.sql"))


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every subprocess started, with its argv, env and the defaults file as it was."""
    calls: list[dict[str, Any]] = []
    original = asyncio.create_subprocess_exec

    async def wrapper(*argv: Any, **kw: Any) -> asyncio.subprocess.Process:
        info: dict[str, Any] = {"argv": [str(a) for a in argv], "env": kw.get("env")}
        if str(argv[1]).startswith("--defaults-extra-file="):
            info["cnf"] = str(argv[1]).split("=", 1)[1]
            info["cnf_mode"], info["cnf_text"] = read_cnf(info["cnf"])
        calls.append(info)
        proc = await original(*argv, **kw)
        info["pid"] = proc.pid
        return proc

    monkeypatch.setattr(asyncio, "create_subprocess_exec", wrapper)
    return calls


def with_dir(settings: Settings, path: Path, **kw: Any) -> Settings:
    """`settings` with `backup.backup_dir = path` in the params file (what `backup_now`
    reads when no options are given); a call passing options gives `backup_dir` there."""
    where = ParamValue(key="backup.backup_dir", value=str(path), file="test", line=1)
    options = {**settings.task_options, "backup": {"backup.backup_dir": where}}
    return dataclasses.replace(settings, task_options=options, **kw)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name != ".lock")


def fake_dump(tmp_path: Path, body: str) -> str:
    script = tmp_path / f"fake-dump-{uuid.uuid4().hex[:6]}"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return str(script)


def fake_plan(directory: Path, command: str, **kw: Any) -> BackupPlan:
    target = DbTarget(
        kind="mysql", name="appdb", host="127.0.0.1", user="u", password=Secret(TRICKY)
    )
    return BackupPlan(
        target=target,
        backup_dir=directory,
        name_format="__DB__-%Y-%m-%d_%H_%M",
        tz=ZoneInfo("UTC"),
        retention_count=kw.pop("retention_count", 5),
        dump_command=command,
        extra_files=kw.pop("extra_files", ()),
    )


async def test_backup_and_restore_round_trip(
    db: AsyncEngine, settings: Settings, tmp_path: Path, restore_target: str
) -> None:
    before = await all_rows(db)
    config = tmp_path / "config-itop.php"
    config.write_text("<?php $MySettings = array();\n")
    ctx = make_context(
        db,
        name="backup",
        settings=with_dir(settings, tmp_path / "b"),
        options=options_of(backup, backup_dir=str(tmp_path / "b"), extra_files=str(config)),
    )

    message = await backup(ctx)

    [archive] = archives(tmp_path / "b")
    assert message.startswith(f"backup {archive} (")
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    manifest = read_manifest(archive)
    assert manifest is not None
    kind = "sqlite" if db.dialect.name == "sqlite" else "mysql"
    assert manifest["database"]["kind"] == kind and manifest["format_version"] == 1
    dump_name = manifest["dump"]
    with tarfile.open(archive) as tar:
        assert tar.getnames() == ["manifest.json", dump_name, "extra/config-itop.php"]
        extra = tar.extractfile("extra/config-itop.php")
        assert extra is not None and extra.read() == config.read_bytes()
    await restore(archive, restore_target, None)
    restored = create_async_engine(restore_target)
    try:
        assert await all_rows(restored) == before
    finally:
        await restored.dispose()
    assert leftovers(tmp_path / "b") == [archive.name]


@mariadb_only
async def test_password_only_in_a_0600_defaults_file(
    db: AsyncEngine, settings: Settings, tmp_path: Path, spawned: list[dict[str, Any]]
) -> None:
    database = db.url.database
    user = f"clbk_{uuid.uuid4().hex[:8]}"
    await admin(f"CREATE USER '{user}'@'%%' IDENTIFIED BY %s", TRICKY)
    try:
        await admin(f"GRANT ALL ON `{database}`.* TO '{user}'@'%%'")
        url = make_url(server_url(database)).set(username=user).render_as_string(False)
        mine = with_dir(settings, tmp_path, database_url=url, database_password=Secret(TRICKY))
        path = await backup_now(mine)
    finally:
        await admin(f"DROP USER IF EXISTS '{user}'@'%%'")
    assert path.exists()
    [call] = spawned
    assert call["argv"][1].startswith("--defaults-extra-file=")
    assert not any(TRICKY in arg or 'w"o#rd' in arg for arg in call["argv"])
    assert call["env"] is not None and "MYSQL_PWD" not in call["env"]
    assert not any(TRICKY in v for v in call["env"].values())
    assert call["cnf_mode"] == 0o600 and "password=" in call["cnf_text"]
    assert not exists(call["cnf"]), "defaults file removed"


@mariadb_only
async def test_wrong_password_fails_cleanly_without_leaking_it(
    db: AsyncEngine, settings: Settings, tmp_path: Path, spawned: list[dict[str, Any]]
) -> None:
    url = server_url(db.url.database, username="nobody_here")
    mine = with_dir(settings, tmp_path, database_url=url, database_password=Secret(TRICKY))
    plan = BackupPlan.from_options(
        mine, make_url(url), options_of(backup, backup_dir=str(tmp_path))
    )
    with pytest.raises(
        BackupError, match=r"(?s)mariadb-dump failed \(exit 2\):.*Access denied"
    ) as info:
        await run_backup(plan, db)  # the named lock through the fixture's engine
    assert TRICKY not in str(info.value)
    assert leftovers(tmp_path) == []
    assert not exists(spawned[0]["cnf"])


@mariadb_only
async def test_unknown_database_fails_cleanly(
    db: AsyncEngine, settings: Settings, tmp_path: Path
) -> None:
    url = server_url("cronloop_no_such_db_here")
    plan = BackupPlan.from_options(
        with_dir(settings, tmp_path), make_url(url), options_of(backup, backup_dir=str(tmp_path))
    )
    with pytest.raises(BackupError, match="Unknown database"):
        await run_backup(plan, db)
    assert leftovers(tmp_path) == []


async def test_missing_dump_command_fails_before_anything(tmp_path: Path) -> None:
    with pytest.raises(BackupError, match="command not found: /no/such/mysqldump"):
        await run_backup(fake_plan(tmp_path, "/no/such/mysqldump"), None)
    assert leftovers(tmp_path) == []


async def test_stderr_is_in_the_error_but_the_password_is_not(
    tmp_path: Path, spawned: list[dict[str, Any]]
) -> None:
    command = fake_dump(tmp_path / "..", 'cat "${1#--defaults-extra-file=}" >&2; exit 3')
    with pytest.raises(BackupError) as info:
        await run_backup(fake_plan(tmp_path, command), None)
    message = str(info.value)
    assert "failed (exit 3)" in message and "user=" in message and "********" in message
    assert TRICKY not in message
    assert leftovers(tmp_path) == []


async def test_cancellation_mid_dump_leaves_nothing(
    tmp_path: Path, spawned: list[dict[str, Any]]
) -> None:
    command = fake_dump(tmp_path / "..", "echo 'CREATE TABLE t (a int);'; exec sleep 30")
    run = asyncio.create_task(run_backup(fake_plan(tmp_path, command), None))
    for _ in range(200):  # bounded: until the dump has written something
        await asyncio.sleep(0.01)
        if spawned and "pid" in spawned[0] and spooled_bytes(tmp_path):
            break
    else:
        pytest.fail("the fake dump never started")
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert leftovers(tmp_path) == []
    assert not exists(spawned[0]["cnf"])
    with pytest.raises(ProcessLookupError):
        os.kill(spawned[0]["pid"], 0)


@mariadb_only
async def test_deadline_mid_dump_stops_the_task_and_leaves_nothing(
    db: AsyncEngine, settings: Settings, tmp_path: Path, spawned: list[dict[str, Any]]
) -> None:
    command = fake_dump(tmp_path, "echo '-- dump'; exec sleep 30")
    ctx = make_context(
        db,
        settings=with_dir(settings, tmp_path / "b"),
        options=options_of(backup, backup_dir=str(tmp_path / "b"), dump_command=command),
    )
    stop_after_checkpoints(ctx, 5)
    with pytest.raises(StopRun):
        await asyncio.wait_for(backup(ctx), 10)
    assert leftovers(tmp_path / "b") == []
    with pytest.raises(ProcessLookupError):
        os.kill(spawned[0]["pid"], 0)


@mariadb_only
async def test_two_concurrent_backups_the_second_is_busy(
    db: AsyncEngine, settings: Settings, tmp_path: Path
) -> None:
    command = fake_dump(tmp_path, "sleep 0.3; echo '-- dump'")
    contexts = [
        make_context(
            db,
            settings=with_dir(settings, tmp_path / "b"),
            options=options_of(backup, backup_dir=str(tmp_path / "b"), dump_command=command),
        )
        for _ in range(2)
    ]
    messages = await asyncio.gather(*(backup(c) for c in contexts))
    assert sorted(m == BUSY for m in messages) == [False, True], messages
    assert len(archives(tmp_path / "b")) == 1


@mariadb_only
async def test_named_lock_makes_another_host_busy(
    db: AsyncEngine, settings: Settings, tmp_path: Path
) -> None:
    """Another host: a different backup directory, the same database."""
    async with db.connect() as other:
        name = f"cronloop_backup.{db.url.database}"
        assert (await other.execute(text("SELECT GET_LOCK(:n, 0)"), {"n": name})).scalar() == 1
        ctx = make_context(
            db,
            settings=with_dir(settings, tmp_path),
            options=options_of(backup, backup_dir=str(tmp_path)),
        )
        assert await backup(ctx) == BUSY
        await other.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": name})
    assert leftovers(tmp_path) == []


@sqlite_only
async def test_directory_lock_makes_a_second_backup_busy(
    db: AsyncEngine, settings: Settings, tmp_path: Path
) -> None:
    tmp_path = tmp_path / "b"
    tmp_path.mkdir()
    fd = os.open(tmp_path / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        ctx = make_context(
            db,
            settings=with_dir(settings, tmp_path),
            options=options_of(backup, backup_dir=str(tmp_path)),
        )
        assert await backup(ctx) == BUSY
        with pytest.raises(BackupBusy):
            await backup_now(with_dir(settings, tmp_path))
    finally:
        os.close(fd)
    assert leftovers(tmp_path) == []


@sqlite_only
async def test_retention_keeps_exactly_n_and_never_foreign_files(
    db: AsyncEngine, settings: Settings, tmp_path: Path
) -> None:
    tmp_path = tmp_path / "b"
    tmp_path.mkdir()
    foreign = {
        "notes.txt": b"mine",
        "cronloop-2020-01-01_00_00.tar.gz": b"not a tar at all",  # matches the pattern
        "otherdb-2020-01-01_00_00.tar.gz": b"",
        "cronloop-2020-01-01_00_01.tar.gz.bak": b"",
    }
    for name, data in foreign.items():
        (tmp_path / name).write_bytes(data)
    plan = BackupPlan.from_options(
        with_dir(settings, tmp_path),
        db.url,
        options_of(backup, backup_dir=str(tmp_path), retention_count=2),
    )
    made = [(await run_backup(plan, db, now=T0 + timedelta(minutes=i))) for i in range(4)]
    assert [len(r.deleted) for r in made] == [0, 0, 1, 1]
    ours = [p.name for p in archives(tmp_path, "cronloop-2026-*.tar.gz")]
    assert ours == [made[2].path.name, made[3].path.name]
    for name, data in foreign.items():
        assert (tmp_path / name).read_bytes() == data
    keep_all = dataclasses.replace(plan, retention_count=0)
    await run_backup(keep_all, db, now=T0 + timedelta(minutes=10))
    assert len(archives(tmp_path, "cronloop-2026-*.tar.gz")) == 3


@sqlite_only
async def test_leftovers_of_a_crash_are_removed_and_names_never_collide(
    db: AsyncEngine, settings: Settings, tmp_path: Path
) -> None:
    tmp_path = tmp_path / "b"
    tmp_path.mkdir()
    (tmp_path / ".cronloop-backup-0123.partial").mkdir()
    (tmp_path / "cronloop-2026-03-02_22_30.tar.gz.partial").write_bytes(b"half")
    plan = BackupPlan.from_options(
        with_dir(settings, tmp_path, timezone="UTC"),
        db.url,
        options_of(backup, backup_dir=str(tmp_path)),
    )
    first = await run_backup(plan, db, now=T0)
    second = await run_backup(plan, db, now=T0)
    assert (first.path.name, second.path.name) == (
        "cronloop-2026-03-02_22_30.tar.gz",
        "cronloop-2026-03-02_22_30-1.tar.gz",
    )
    assert leftovers(tmp_path) == sorted([first.path.name, second.path.name])


def test_file_name_format_uses_the_configured_zone() -> None:
    paris = ZoneInfo("Europe/Paris")
    now = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)  # 03:30 in Paris, after the DST jump
    name = archive_name("__DB__-%Y-%m-%d_%H_%M", "itop", now, paris)
    assert name == "itop-2026-03-29_03_30.tar.gz"
    assert archive_name("bk_%d%m%Y", "x%y", now, paris) == "bk_29032026.tar.gz"
    assert archive_name("__DB__", "x%Y", now, paris) == "x%Y.tar.gz"  # a `%` in the name stays
    pattern = archive_pattern("__DB__-%Y-%m-%d_%H_%M", "itop")
    assert pattern.fullmatch("itop-2026-03-29_03_30.tar.gz")
    assert pattern.fullmatch("itop-2026-03-29_03_30-2.tar.gz")
    assert not pattern.fullmatch("itop2-2026-03-29_03_30.tar.gz")
    assert not pattern.fullmatch("itop-2026-03-29_03_30.tar.gz.partial")
    for bad in ("../%Y", "sub/__DB__", ".hidden-%Y"):
        with pytest.raises(BackupError, match="unusable name"):
            archive_name(bad, "itop", now, paris)


def test_target_from_url_prefers_the_password_setting() -> None:
    url = make_url("mysql://app:inurl@db.example:3307/itop?unix_socket=/run/m.sock")
    target = DbTarget.from_url(url)
    assert (target.name, target.user, target.port, target.socket) == (
        "itop",
        "app",
        3307,
        "/run/m.sock",
    )
    assert target.secrets() == ["inurl"]
    assert DbTarget.from_url(url, Secret("setting")).secrets() == ["setting"]
    assert "inurl" not in repr(target)
    with pytest.raises(BackupError, match="in-memory"):
        DbTarget.from_url(make_url("sqlite://"))


@sqlite_only
async def test_restore_refuses_a_damaged_archive(
    db: AsyncEngine, settings: Settings, tmp_path: Path
) -> None:
    path = await backup_now(with_dir(settings, tmp_path / "b"))
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    manifest = json.loads(members[0][1])
    manifest["files"][0]["sha256"] = "0" * 64
    data = json.dumps(manifest).encode()
    members[0][0].size = len(data)
    damaged = tmp_path / "damaged.tar.gz"
    with tarfile.open(damaged, "w:gz") as tar:
        tar.addfile(members[0][0], io.BytesIO(data))
        for member, content in members[1:]:
            tar.addfile(member, io.BytesIO(content))
    target = tmp_path / "restored.db"
    with pytest.raises(BackupError, match="damaged"):
        await restore(damaged, f"sqlite:///{target}", None)
    assert not exists(target)
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"not gzip")
    with pytest.raises(BackupError, match="unreadable archive"):
        await restore(garbage, f"sqlite:///{target}", None)
    foreign = tmp_path / "foreign.tar.gz"
    with tarfile.open(foreign, "w:gz") as tar:
        tar.addfile(tarfile.TarInfo("dump.sql"), io.BytesIO(b""))
    with pytest.raises(BackupError, match="not a cronloop backup"):
        await restore(foreign, f"sqlite:///{target}", None)
    assert not exists(target)


@sqlite_only
@pytest.mark.parametrize("stop_at", [1, 2, 3, 5, 8])
async def test_a_stop_at_any_step_leaves_nothing(
    db: AsyncEngine, settings: Settings, tmp_path: Path, stop_at: int
) -> None:
    """Stop requests seen by the threads (copy, hash, archive) and by the async steps."""
    config = tmp_path / "config.php"
    config.write_bytes(b"x" * 3_000_000)  # several chunks
    calls = [0]

    def should_stop() -> bool:
        calls[0] += 1
        return calls[0] >= stop_at

    async def checkpoint() -> None:
        if should_stop():
            raise StopRun(StopReason.DEADLINE)

    plan = BackupPlan.from_options(
        with_dir(settings, tmp_path / "b"),
        db.url,
        options_of(backup, backup_dir=str(tmp_path / "b"), extra_files=str(config)),
    )
    with pytest.raises(StopRun):
        await run_backup(plan, db, stopper=Stopper(checkpoint, should_stop))
    assert leftovers(tmp_path / "b") == []


async def test_a_missing_extra_file_fails_before_anything(tmp_path: Path) -> None:
    plan = fake_plan(tmp_path / "b", "/bin/true", extra_files=(tmp_path / "nope.php",))
    with pytest.raises(BackupError, match=r"extra file .*nope.php does not exist"):
        await run_backup(plan, None)
    assert not exists(tmp_path / "b")


async def test_a_failed_backup_never_costs_a_good_one(tmp_path: Path) -> None:
    """Retention runs only after a new archive is in place (iTop prunes first)."""
    good = fake_dump(tmp_path, "echo '-- dump'")
    directory = tmp_path / "b"
    for minute in range(2):
        await run_backup(
            fake_plan(directory, good, retention_count=0), None, now=T0 + timedelta(minutes=minute)
        )
    before = leftovers(directory)
    failing = fake_dump(tmp_path, "echo '-- half a dump'; exit 2")
    with pytest.raises(BackupError, match="exit 2"):
        await run_backup(
            fake_plan(directory, failing, retention_count=1), None, now=T0 + timedelta(minutes=5)
        )
    assert leftovers(directory) == before and len(before) == 2
    made = await run_backup(
        fake_plan(directory, good, retention_count=1), None, now=T0 + timedelta(minutes=6)
    )
    assert leftovers(directory) == [made.path.name]


def test_sqlite_copy_survives_a_source_that_keeps_changing(tmp_path: Path) -> None:
    """Every step sees a write from another connection (a busy worker): the stepwise
    copy restarts, then falls back to one step, and the copy is complete and consistent."""
    source = tmp_path / "src #1?.db"  # URI-special characters in the path
    conn = sqlite3.connect(source)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t (v) VALUES (?)", [("x" * 500,) for _ in range(200)])
    conn.commit()
    writes = [0]

    def busy_writer() -> bool:
        writes[0] += 1
        conn.execute("INSERT INTO t (v) VALUES ('more')")
        conn.commit()
        return False

    sqlite_copy(str(source), tmp_path / "copy.db", Stopper(should_stop=busy_writer), step_pages=5)
    copy = sqlite3.connect(tmp_path / "copy.db")
    try:
        count = copy.execute("SELECT count(*) FROM t").fetchone()[0]
        assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        copy.close()
        conn.close()
    assert writes[0] >= 3 and count == 200 + writes[0]


@mariadb_only
async def test_restore_errors_are_clear(
    db: AsyncEngine, settings: Settings, tmp_path: Path
) -> None:
    path = await backup_now(with_dir(settings, tmp_path), engine=db)
    with pytest.raises(BackupError, match="Unknown database"):
        await restore(path, server_url("cronloop_no_such_db_here"), None)
    with pytest.raises(BackupError, match="Access denied") as info:
        await restore(path, server_url("cronloop_no_such_db_here"), Secret(TRICKY))
    assert TRICKY not in str(info.value)
    with pytest.raises(BackupError, match="holds a mysql dump; the target is sqlite"):
        await restore(path, f"sqlite:///{tmp_path / 'x.db'}", None)


def test_options_from_the_params_file() -> None:
    def value(key: str, text: str) -> ParamValue:
        return ParamValue(key=f"backup.{key}", value=text, file="/etc/cronloop.params", line=3)

    settings = Settings(
        task_options={
            "backup": {
                "backup.retention_count": value("retention_count", " 9 "),
                "backup.extra_files": value("extra_files", "/a.php, /b.php"),
            }
        }
    )
    options = options_from_settings(settings)
    assert options["retention_count"] == 9 and options["file_name_format"].startswith("__DB__")
    plan = BackupPlan.from_options(settings, make_url("mysql://u@h/itop"), options)
    assert plan.extra_files == (Path("/a.php"), Path("/b.php")) and plan.retention_count == 9
    bad = Settings(task_options={"backup": {"backup.retention_count": value("x", "many")}})
    with pytest.raises(BackupError, match="retention_count = 'many': expected a whole number"):
        options_from_settings(bad)
