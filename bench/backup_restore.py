"""Backup and restore of a MariaDB database holding 100,000 realistic tickets.

Creates a scratch database on the server, migrates it, fills `cronloop_ticket`
(tasks/tickets.py) with N tickets plus a bench-only `bench_ticket_body` table holding
each ticket's ~500-character description (the ticket table has none, iTop's has), takes
a backup with the real `backup_now` (mariadb-dump, --single-transaction), restores it into
a second scratch database with `restore`, checks that both hold the same data
(CHECKSUM TABLE), prints sizes and seconds, and drops both databases.

    python bench/backup_restore.py mysql+aiomysql://root@127.0.0.1:3306/ -n 100000
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine  # noqa: E402

from cronloop.config.settings import Settings  # noqa: E402
from cronloop.standard.backup import OPTIONS as BACKUP_OPTIONS  # noqa: E402
from cronloop.standard.backup import backup_now, read_manifest, restore  # noqa: E402
from cronloop.standard.tickets import STATUSES, tickets  # noqa: E402
from cronloop.store.sql.migrate import upgrade  # noqa: E402

WORDS = (
    "printer",
    "network",
    "outage",
    "laptop",
    "password",
    "reset",
    "mailbox",
    "quota",
    "VPN",
    "access",
    "badge",
    "screen",
    "flicker",
    "invoice",
    "approval",
    "license",
    "renewal",
    "backup",
    "failure",
    "database",
    "slow",
    "phone",
    "headset",
    "desk",
    "move",
    "onboarding",
    "offboarding",
    "firewall",
    "rule",
    "certificate",
)


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize()


def _ticket(i: int, rng: random.Random, now: datetime) -> dict[str, Any]:
    status = rng.choice(STATUSES)
    created = now - timedelta(minutes=rng.randint(0, 500_000))
    running = status in ("new", "approved", "assigned", "escalated_tto", "escalated_ttr")
    values: dict[str, Any] = {
        "ref": f"R-{i:07d}",
        "title": _sentence(rng, 8)[:255],
        "status": status,
        "priority": rng.randint(1, 4),
        "team_email": f"team{i % 40}@example.org",
        "agent_email": f"agent{i % 300}@example.org" if status != "new" else None,
        "created": created,
    }
    for sw, goal in (("tto", 4 * 3600.0), ("ttr", 48 * 3600.0)):
        values[f"{sw}_state"] = "running" if running else "stopped"
        values[f"{sw}_started"] = created
        values[f"{sw}_goal_s"] = goal
        for pct in (75, 100):
            values[f"{sw}_{pct}_deadline"] = created + timedelta(seconds=goal * pct / 100)
            values[f"{sw}_{pct}_triggered"] = rng.random() < 0.3
    return values


async def fill(engine: AsyncEngine, n: int) -> None:
    rng = random.Random(42)
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "CREATE TABLE bench_ticket_body (ticket_id INT PRIMARY KEY, description TEXT "
                "NOT NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
            )
        )
    for start in range(0, n, 2000):
        rows = [_ticket(i, rng, now) for i in range(start + 1, min(n, start + 2000) + 1)]
        bodies = [
            {"ticket_id": i, "description": _sentence(rng, 70)[:500]}
            for i in range(start + 1, start + len(rows) + 1)
        ]
        async with engine.begin() as conn:
            await conn.execute(insert(tickets), rows)
            await conn.execute(
                text("INSERT INTO bench_ticket_body VALUES (:ticket_id, :description)"), bodies
            )


async def checksums(engine: AsyncEngine) -> dict[str, Any]:
    async with engine.connect() as conn:
        result = await conn.execute(text("CHECKSUM TABLE cronloop_ticket, bench_ticket_body"))
        return {row[0].split(".")[-1]: row[1] for row in result.all()}


async def admin(server: str, sql: str) -> None:
    engine = create_async_engine(server)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


async def main(server_url: str, n: int) -> None:
    base = make_url(server_url).set(drivername="mysql+aiomysql")
    names = [f"cronloop_bench_{uuid.uuid4().hex[:6]}", f"cronloop_bench_r_{uuid.uuid4().hex[:6]}"]
    server = base.set(database=None).render_as_string(hide_password=False)
    urls = [base.set(database=name).render_as_string(hide_password=False) for name in names]
    workdir = Path(tempfile.mkdtemp(prefix="cronloop-bench-"))
    for name in names:
        await admin(server, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    source = create_async_engine(urls[0])
    restored = create_async_engine(urls[1])
    try:
        await upgrade(source)
        started = time.perf_counter()
        await fill(source, n)
        print(f"filled {n} tickets in {time.perf_counter() - started:.1f} s")
        async with source.connect() as conn:
            await conn.execute(text("ANALYZE TABLE cronloop_ticket, bench_ticket_body"))
            data_mb = (
                await conn.execute(
                    text(
                        "SELECT SUM(data_length + index_length) / 1048576"
                        " FROM information_schema.tables WHERE table_schema = DATABASE()"
                    )
                )
            ).scalar_one()
        settings = Settings(database_url=urls[0], timezone="UTC")
        started = time.perf_counter()
        options = {**BACKUP_OPTIONS, "backup_dir": str(workdir)}
        archive = await backup_now(settings, engine=source, options=options)
        backup_s = time.perf_counter() - started
        manifest = read_manifest(archive) or {}
        dump_mb = manifest["files"][0]["size"] / 1048576
        started = time.perf_counter()
        await restore(archive, urls[1], None)
        restore_s = time.perf_counter() - started
        same = await checksums(source) == await checksums(restored)
        print(f"database (InnoDB data+index): {float(data_mb):.1f} MiB")
        print(
            f"backup:  {backup_s:.1f} s, dump {dump_mb:.1f} MiB, "
            f"archive {archive.stat().st_size / 1048576:.1f} MiB"
        )
        print(f"restore: {restore_s:.1f} s (verify + load), data identical: {same}")
        if not same:
            raise SystemExit("restored data differs")
    finally:
        await source.dispose()
        await restored.dispose()
        for name in names:
            await admin(server, f"DROP DATABASE IF EXISTS `{name}`")
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("server_url", help="mysql+aiomysql://root@127.0.0.1:3306/")
    parser.add_argument("-n", type=int, default=100_000, help="tickets (default 100000)")
    args = parser.parse_args()
    asyncio.run(main(args.server_url, args.n))
