"""files.py: what cronloop creates is 0600 / 0700 under any umask; what exists is kept."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from cronloop.files import create_private_file, open_private, private_dir


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    """umask 000: whatever mode a file gets is the one asked for explicitly."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_file_is_0600_and_an_existing_one_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "db"
    assert create_private_file(path) is True
    assert mode(path) == 0o600 and path.read_bytes() == b""
    path.write_bytes(b"data")
    path.chmod(0o640)
    assert create_private_file(path) is False
    assert mode(path) == 0o640 and path.read_bytes() == b"data"


def test_open_private_creates_0600(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    os.close(open_private(path))
    assert mode(path) == 0o600


def test_a_new_directory_is_0700_an_existing_one_kept(tmp_path: Path) -> None:
    new = private_dir(tmp_path / "a" / "state")
    assert mode(new) == 0o700
    kept = tmp_path / "kept"
    kept.mkdir(mode=0o755)
    private_dir(kept)
    assert mode(kept) == 0o755


async def test_the_sqlite_database_and_its_wal_and_shm_files_are_0600(tmp_path: Path) -> None:
    from cronloop.config.settings import Settings
    from cronloop.store.sql.engine import create_engine

    path = tmp_path / "state" / "cronloop.db"
    engine = create_engine(Settings(database_url=f"sqlite+aiosqlite:///{path}"))
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
            await conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        async with engine.connect() as conn:  # WAL mode: -wal and -shm exist while open
            await conn.exec_driver_sql("SELECT x FROM t")
            files = {p.name: mode(p) for p in path.parent.iterdir()}
    finally:
        await engine.dispose()
    assert mode(path.parent) == 0o700
    assert files == {"cronloop.db": 0o600, "cronloop.db-wal": 0o600, "cronloop.db-shm": 0o600}


def test_the_file_transport_outbox_is_private(tmp_path: Path) -> None:
    from cronloop.standard.email_transport import write_eml

    written = write_eml(tmp_path / "state" / "outbox-eml", "m.eml", b"Subject: x\r\n\r\nbody")
    assert mode(written.parent) == 0o700 and mode(written) == 0o600


def test_a_database_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    from cronloop.config.settings import ConfigError, Settings
    from cronloop.store.sql.engine import create_engine

    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where the database's directory would be
    path = blocker / "cronloop.db"
    with pytest.raises(ConfigError, match=f"cannot create the database {path}"):
        create_engine(Settings(database_url=f"sqlite+aiosqlite:///{path}"))
