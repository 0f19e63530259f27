"""GC with unusable stored paths (issue 10, item 7), on SQLite and MariaDB: the row is
kept and reported, and no other file of its batch is orphaned."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from cronloop.standard.attachments import draft_attachments, export_results
from cronloop.standard.cleanup import bulk_export_gc, draft_attachment_gc, unusable_path
from cronloop.testing import make_context, options_of

PAST = datetime.now(UTC) - timedelta(hours=1)
NUL_PATH = "invoice.pdf\x00.png"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "files"
    path.mkdir()
    return path


def stored_file(root: Path) -> Path:
    file = root / f"{uuid.uuid4().hex}.png"
    file.write_bytes(b"\x89PNG data")
    return file


async def add_draft(engine: AsyncEngine, stored: str) -> int:
    async with engine.begin() as conn:
        result = await conn.execute(
            insert(draft_attachments).values(
                kind="attachment", file_path=stored, created=PAST, expire=PAST
            )
        )
        key = result.inserted_primary_key
        assert key is not None
        return int(key[0])


async def draft_ids(engine: AsyncEngine) -> set[int]:
    async with engine.connect() as conn:
        return set((await conn.execute(select(draft_attachments.c.id))).scalars())


def remaining(files: list[Path]) -> list[Path]:
    return [f for f in files if f.exists()]


async def test_a_nul_byte_in_one_path_loses_no_other_file(engine: AsyncEngine, root: Path) -> None:
    files = [stored_file(root) for _ in range(4)]
    good = [await add_draft(engine, f.name) for f in files[:2]]
    bad = await add_draft(engine, NUL_PATH)
    good += [await add_draft(engine, str(f)) for f in files[2:]]  # absolute, inside the root
    async with engine.connect() as conn:  # the database kept the NUL (both do)
        stored = await conn.execute(
            select(draft_attachments.c.file_path).where(draft_attachments.c.id == bad)
        )
        assert stored.scalar_one() == NUL_PATH
    ctx = make_context(engine, options=options_of(draft_attachment_gc, files_root=str(root)))

    with capture_logs() as logs:
        message = await draft_attachment_gc(ctx)

    assert remaining(files) == [], "every usable row's file is deleted"
    assert await draft_ids(engine) == {bad}, "the unusable row is kept, the others deleted"
    assert message == (
        "deleted 4 draft attachment(s), 4 file(s); kept 1 row(s) whose file_path is unusable"
    )
    [warning] = [e for e in logs if e["log_level"] == "warning"]
    assert warning["row_id"] == bad and warning["reason"] == "contains a NUL byte"
    assert warning["path"] == repr(NUL_PATH)


async def test_a_batch_of_only_unusable_rows_does_not_end_the_sweep(
    engine: AsyncEngine, root: Path
) -> None:
    """The next batch skips the kept rows: the good ones behind them are still done, and
    the run ends (a kept row is not claimed again and again)."""
    bad = {await add_draft(engine, f"{i}\x00") for i in range(3)}
    files = [stored_file(root) for _ in range(5)]
    for f in files:
        await add_draft(engine, f.name)
    options = options_of(draft_attachment_gc, files_root=str(root), batch_size=2)

    message = await draft_attachment_gc(make_context(engine, options=options))

    assert remaining(files) == [] and await draft_ids(engine) == bad
    assert message.endswith("5 file(s); kept 3 row(s) whose file_path is unusable")
    again = await draft_attachment_gc(make_context(engine, options=options))  # reported again
    assert (
        again
        == "deleted 0 draft attachment(s), 0 file(s); kept 3 row(s) whose file_path is unusable"
    )
    assert await draft_ids(engine) == bad


async def test_bulk_export_gc_keeps_an_unusable_row_and_deletes_the_rest(
    engine: AsyncEngine, root: Path
) -> None:
    files = [stored_file(root) for _ in range(3)]
    async with engine.begin() as conn:
        for i, path in enumerate([str(files[0]), NUL_PATH, str(files[1]), str(files[2])]):
            await conn.execute(
                insert(export_results).values(
                    token=f"t{i}", created=PAST - timedelta(days=2), file_path=path
                )
            )
    options = options_of(bulk_export_gc, files_root=str(root), batch_size=10)

    message = await bulk_export_gc(make_context(engine, options=options))

    assert remaining(files) == []
    async with engine.connect() as conn:
        left = (await conn.execute(select(export_results.c.token))).scalars().all()
    assert left == ["t1"]
    assert message.endswith("3 file(s); kept 1 row(s) whose file_path is unusable")


@pytest.mark.parametrize(
    ("stored", "reason"),
    [
        (NUL_PATH, "contains a NUL byte"),
        ("\udcff-lone-surrogate-\ud800", "not encodable as a file name"),
        (b"/bytes", "not text (bytes)"),
        ("/fine/path.png", None),
        ("relative/to/root.png", None),
        (None, None),
        ("", None),
    ],
)
def test_unusable_path_says_why(stored: object, reason: str | None) -> None:
    assert unusable_path(stored) == reason
