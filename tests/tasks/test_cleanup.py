"""The clean-up tasks on SQLite and MariaDB: drafts, bulk-export results, run history."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from cronloop import StopRun
from cronloop.config.settings import Settings
from cronloop.standard.attachments import draft_attachments, export_results
from cronloop.standard.cleanup import bulk_export_gc, draft_attachment_gc, history_gc
from cronloop.store.sql.tables import runs
from cronloop.testing import make_context, options_of, stop_after_checkpoints

NOW = datetime.now(UTC)
PAST = NOW - timedelta(hours=1)
FUTURE = NOW + timedelta(hours=1)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "files"
    path.mkdir()
    return path


async def add_draft(
    engine: AsyncEngine,
    root: Path | None,
    *,
    expire: datetime | None = PAST,
    object_id: int | None = None,
    created: datetime = PAST,
    stored: str | None = None,
) -> tuple[int, Path | None]:
    """A draft row with a file under `root` (unless root is None: contents in the DB)."""
    file: Path | None = None
    if root is not None and stored is None:
        file = root / f"{uuid.uuid4().hex}.png"
        file.write_bytes(b"\x89PNG data")
        stored = file.name  # relative to files_root
    async with engine.begin() as conn:
        result = await conn.execute(
            insert(draft_attachments).values(
                object_class="UserRequest" if object_id else None,
                object_id=object_id,
                kind="inline_image",
                file_path=stored,
                contents=None if stored else blob(engine, b"\x00\x01 binary"),
                mime_type="image/png",
                size=9,
                created=created,
                expire=expire,
            )
        )
        return int(result.inserted_primary_key[0]), file  # type: ignore[index]


def blob(engine: AsyncEngine, data: bytes) -> Any:
    """A binary value; on MariaDB through UNHEX() because aiomysql 0.3.2 cannot bind bytes
    with PyMySQL >= 1.2.3 (aio-libs/aiomysql#1080)."""
    return data if engine.dialect.name == "sqlite" else func.unhex(data.hex())


def files_in(directory: Path) -> list[Path]:
    return list(directory.iterdir())


async def draft_ids(engine: AsyncEngine) -> set[int]:
    async with engine.connect() as conn:
        return set((await conn.execute(select(draft_attachments.c.id))).scalars())


def gc_options(root: Path, **kw: Any) -> dict[str, Any]:
    return options_of(draft_attachment_gc, files_root=str(root), **kw)


async def test_expired_unlinked_drafts_go_with_their_files(engine: AsyncEngine, root: Path) -> None:
    expired = [await add_draft(engine, root) for _ in range(7)]
    in_db = await add_draft(engine, None)  # contents in the database, no file
    no_expire_old = await add_draft(engine, root, expire=None, created=NOW - timedelta(days=2))
    linked = await add_draft(engine, root, object_id=42)
    fresh = await add_draft(engine, root, expire=FUTURE)
    no_expire_new = await add_draft(engine, root, expire=None, created=NOW)
    ctx = make_context(engine, options=gc_options(root, batch_size=3))

    message = await draft_attachment_gc(ctx)

    assert await draft_ids(engine) == {linked[0], fresh[0], no_expire_new[0]}
    for _, file in [*expired, no_expire_old]:
        assert file is not None and not file.exists()
    for _, file in (linked, fresh, no_expire_new):
        assert file is not None and file.exists()
    assert in_db[0] not in await draft_ids(engine)
    assert message == "deleted 9 draft attachment(s), 8 file(s)"


async def test_lifetime_option_applies_when_expire_is_null(engine: AsyncEngine, root: Path) -> None:
    row, file = await add_draft(engine, root, expire=None, created=NOW - timedelta(minutes=10))
    await draft_attachment_gc(make_context(engine, options=gc_options(root, lifetime_s=3600.0)))
    assert row in await draft_ids(engine)
    await draft_attachment_gc(make_context(engine, options=gc_options(root, lifetime_s=60.0)))
    assert row not in await draft_ids(engine) and file is not None and not file.exists()


async def test_interrupted_between_batches_leaves_rows_and_files_consistent(
    engine: AsyncEngine, root: Path
) -> None:
    drafts = [await add_draft(engine, root) for _ in range(10)]
    ctx = make_context(engine, options=gc_options(root, batch_size=3))
    stop_after_checkpoints(ctx, 4)  # stops after one or more whole batches

    with pytest.raises(StopRun):
        await draft_attachment_gc(ctx)

    remaining = await draft_ids(engine)
    assert 0 < len(remaining) < 10 and (10 - len(remaining)) % 3 == 0
    for row_id, file in drafts:
        assert file is not None
        assert file.exists() == (row_id in remaining), f"row {row_id} and its file disagree"
    await draft_attachment_gc(make_context(engine, options=gc_options(root, batch_size=3)))
    assert await draft_ids(engine) == set()
    assert files_in(root) == []


async def test_concurrent_runs_delete_each_row_once(engine: AsyncEngine, root: Path) -> None:
    for _ in range(40):
        await add_draft(engine, root)
    contexts = [make_context(engine, options=gc_options(root, batch_size=4)) for _ in range(3)]

    messages = await asyncio.gather(*(draft_attachment_gc(c) for c in contexts))

    counts = [int(m.split()[1]) for m in messages]
    files = [int(m.split(", ")[1].split()[0]) for m in messages]
    assert sum(counts) == 40 and sum(files) == 40, messages
    assert await draft_ids(engine) == set() and files_in(root) == []


async def test_missing_file_is_fine(engine: AsyncEngine, root: Path) -> None:
    row, file = await add_draft(engine, root)
    assert file is not None
    file.unlink()
    message = await draft_attachment_gc(make_context(engine, options=gc_options(root)))
    assert row not in await draft_ids(engine)
    assert message == "deleted 1 draft attachment(s), 0 file(s)"


async def test_files_outside_root_are_kept(engine: AsyncEngine, root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    (root / "link").symlink_to(tmp_path, target_is_directory=True)
    inside_link = root / "victim"
    inside_link.symlink_to(outside)  # a symlink inside the root: removed as a link only
    rows = [
        await add_draft(engine, root, stored=str(outside)),
        await add_draft(engine, root, stored="../precious.txt"),
        await add_draft(engine, root, stored="link/precious.txt"),
        await add_draft(engine, root, stored="victim"),
    ]

    message = await draft_attachment_gc(make_context(engine, options=gc_options(root)))

    assert outside.read_text() == "keep me"
    assert not inside_link.is_symlink()
    assert await draft_ids(engine) == set(), "rows are deleted even when the file is refused"
    assert message == "deleted 4 draft attachment(s), 1 file(s)"
    assert len(rows) == 4


async def test_without_files_root_no_file_is_deleted(engine: AsyncEngine, root: Path) -> None:
    row, file = await add_draft(engine, root, stored=None)
    ctx = make_context(engine, options=options_of(draft_attachment_gc))  # files_root = ""
    await draft_attachment_gc(ctx)
    assert row not in await draft_ids(engine)
    assert file is not None and file.exists()


async def add_export(engine: AsyncEngine, root: Path, created: datetime) -> Path:
    file = root / f"export-{uuid.uuid4().hex}.csv"
    file.write_text("a;b\n")
    async with engine.begin() as conn:
        await conn.execute(
            insert(export_results).values(
                token=uuid.uuid4().hex,
                created=created,
                file_path=str(file),
                size=4,
                status="done",
            )
        )
    return file


async def test_bulk_export_gc_deletes_old_results_and_files(
    engine: AsyncEngine, root: Path
) -> None:
    old = [await add_export(engine, root, NOW - timedelta(days=2)) for _ in range(5)]
    recent = await add_export(engine, root, NOW - timedelta(hours=2))
    opts = options_of(bulk_export_gc, files_root=str(root), batch_size=2)
    ctx = make_context(engine, options=opts)

    message = await bulk_export_gc(ctx)

    assert message == "deleted 5 bulk export result(s), 5 file(s)"
    assert [f.exists() for f in old] == [False] * 5 and recent.exists()
    async with engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(export_results))).scalar() == 1
    opts = options_of(bulk_export_gc, files_root=str(root), max_age_s=3600.0)
    await bulk_export_gc(make_context(engine, options=opts))
    assert not recent.exists()


async def add_run(engine: AsyncEngine, started: datetime, outcome: str) -> str:
    run_id = str(uuid.uuid4())
    async with engine.begin() as conn:
        await conn.execute(
            insert(runs).values(
                run_id=run_id,
                task_name="t",
                scheduled_for=started,
                started=started,
                outcome=outcome,
                worker="w",
            )
        )
    return run_id


async def test_history_gc_prunes_finished_runs_past_retention(
    engine: AsyncEngine, settings: Settings
) -> None:
    old = [await add_run(engine, NOW - timedelta(days=40), "success") for _ in range(7)]
    old_running = await add_run(engine, NOW - timedelta(days=40), "running")
    recent = await add_run(engine, NOW - timedelta(days=5), "failed")
    ctx = make_context(engine, settings=settings, options=options_of(history_gc, batch_size=3))

    message = await history_gc(ctx)

    async with engine.connect() as conn:
        left = set((await conn.execute(select(runs.c.run_id))).scalars())
    assert left == {old_running, recent}
    assert message == "deleted 7 run history row(s) older than 30 day(s)"
    assert len(old) == 7


async def test_history_gc_keeps_everything_when_retention_is_zero(engine: AsyncEngine) -> None:
    await add_run(engine, NOW - timedelta(days=4000), "success")
    options = options_of(history_gc, retention_days=0)
    message = await history_gc(make_context(engine, options=options))
    assert "kept" in message
    async with engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(runs))).scalar() == 1


async def test_history_gc_stops_at_a_checkpoint_between_batches(
    engine: AsyncEngine, settings: Settings
) -> None:
    for _ in range(9):
        await add_run(engine, NOW - timedelta(days=40), "success")
    ctx = make_context(engine, settings=settings, options=options_of(history_gc, batch_size=2))
    stop_after_checkpoints(ctx, 4)
    with pytest.raises(StopRun):
        await history_gc(ctx)
    async with engine.connect() as conn:
        left = (await conn.execute(select(func.count()).select_from(runs))).scalar_one()
    assert 0 < left < 9 and (9 - left) % 2 == 0, "stopped between whole batches"


def test_tasks_are_registered_with_their_schedules() -> None:
    for fn, every in ((draft_attachment_gc, 3600), (bulk_export_gc, 86400), (history_gc, 86400)):
        definition = fn.__cronloop_task__  # type: ignore[attr-defined]
        assert definition.every == every
