"""Throughput of the `email` task: messages/second through a local SMTP server.

Queues N messages into the outbox of the given database, runs the task until the outbox is
empty, and prints messages/second with the given concurrency and with concurrency 1
(iTop's one-at-a-time sending). The SMTP server (aiosmtpd, accepting and counting) runs in
a separate process so it does not share the interpreter lock with the sender.

    python bench/email_throughput.py sqlite+aiosqlite:////tmp/bench.db
    python bench/email_throughput.py mysql+aiomysql://root@127.0.0.1:3306/cronloop_bench -n 10000

The database must exist; migrations are applied; the outbox is emptied before each run.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from cronloop.config.settings import Settings


class Throughput(NamedTuple):
    """Messages per second while sending, and this process's CPU seconds meanwhile."""

    msgs_per_s: float
    cpu_s: float

    def cpu_ms_per_msg(self, n: int) -> float:
        return 1000 * self.cpu_s / n if n else float("nan")


def _cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def serve(port: int, latency_s: float) -> None:
    """Child process: accept everything on `port` (each DATA answered after `latency_s`, to
    mimic a remote relay) until stdin closes, then print the count."""
    from aiosmtpd.controller import Controller

    class Counter:
        received = 0

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            if latency_s:
                await asyncio.sleep(latency_s)
            Counter.received += 1
            return "250 OK"

    controller = Controller(Counter(), hostname="127.0.0.1", port=port, ready_timeout=10)
    controller.start()
    print("ready", flush=True)
    sys.stdin.read()
    controller.stop()
    print(Counter.received, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def fill(engine: AsyncEngine, n: int) -> None:
    from sqlalchemy import delete
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from cronloop.standard.outbox import outbox, queue_email

    sessions = async_sessionmaker(engine, expire_on_commit=False)
    async with sessions() as session, session.begin():
        await session.execute(delete(outbox))
    for start in range(0, n, 1000):
        async with sessions() as session, session.begin():
            for i in range(start, min(n, start + 1000)):
                await queue_email(
                    session,
                    to=f"user{i}@example.org",
                    subject=f"Message {i}",
                    body_text="Hello,\n\nthis is a benchmark message.\n" * 10,
                )


async def remaining(engine: AsyncEngine) -> int:
    from sqlalchemy import func, select

    from cronloop.standard.outbox import outbox

    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(outbox))).scalar_one())


async def measure(
    engine: AsyncEngine, settings: Settings, n: int, options: dict[str, Any]
) -> Throughput:
    from cronloop.standard.email import send_queued_email
    from cronloop.testing import make_context, options_of

    await fill(engine, n)
    started, cpu0 = time.perf_counter(), _cpu_s()
    while await remaining(engine):
        ctx = make_context(
            engine,
            name="email",
            settings=settings,
            timeout_s=3600,
            options=options_of(send_queued_email, **options),
        )
        await send_queued_email(ctx)
    return Throughput(n / (time.perf_counter() - started), _cpu_s() - cpu0)


async def measure_one_at_a_time(
    engine: AsyncEngine, settings: Settings, n: int, options: dict[str, Any]
) -> Throughput:
    """iTop's ExecAsyncTask, the rate cronloop must beat: one message per run, each run
    with its own housekeeping, claim, SMTP session (connect, send, quit) and record. The
    task itself does this when a run takes one message and then finds itself past half
    its time: the context is made so."""
    import dataclasses

    from cronloop.standard.email import send_queued_email
    from cronloop.testing import make_context, options_of

    one = {**options, "concurrency": 1, "batch_size": 1}
    await fill(engine, n)
    started, cpu0 = time.perf_counter(), _cpu_s()
    while await remaining(engine):
        ctx = make_context(
            engine,
            name="email",
            settings=settings,
            timeout_s=3600,
            options=options_of(send_queued_email, **one),
        )
        ctx = dataclasses.replace(ctx, _deadline_mono=ctx._clock.monotonic() + 600)
        await send_queued_email(ctx)
    return Throughput(n / (time.perf_counter() - started), _cpu_s() - cpu0)


async def bench(args: argparse.Namespace, port: int) -> list[tuple[int, float]]:
    """The parent process: cronloop is imported only here, not in the server child."""
    sys.path.insert(0, str(ROOT))
    import structlog

    from cronloop.config.settings import Settings
    from cronloop.store.sql.engine import create_engine
    from cronloop.store.sql.migrate import upgrade

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    settings = Settings(database_url=args.url)
    engine = create_engine(settings)
    try:
        await upgrade(engine)
        results = []
        for concurrency in dict.fromkeys([args.concurrency, 1]):
            options = {
                "transport": "smtp",
                "smtp_host": "127.0.0.1",
                "smtp_port": port,
                "concurrency": concurrency,
                "batch_size": args.batch_size,
                "sender": "bench@example.org",
            }
            rate, cpu = await measure(engine, settings, args.n, options)
            print(
                f"{engine.dialect.name}: concurrency {concurrency}: {rate:,.0f} messages/s, "
                f"{1000 * cpu / args.n:.2f} ms CPU per message",
                flush=True,
            )
            results.append((concurrency, rate))
        return results
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", nargs="?", help="database URL (asyncio driver)")
    parser.add_argument("-n", type=int, default=10_000, help="messages per run (10000)")
    parser.add_argument("--concurrency", type=int, default=4, help="parallel senders (4)")
    parser.add_argument("--batch-size", type=int, default=100, help="rows per claim (100)")
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="server delay before answering DATA, like a remote relay (0)",
    )
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.latency_ms / 1000)
        return
    if not args.url:
        parser.error("give a database URL")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port), "--latency-ms", str(args.latency_ms)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdin is not None and server.stdout is not None
    try:
        if server.stdout.readline().strip() != "ready":
            raise SystemExit("the SMTP server did not start")
        results = asyncio.run(bench(args, port))
    finally:
        server.stdin.close()
        received = server.stdout.read().strip()
        server.wait(timeout=30)
    expected = args.n * len(results)
    print(f"server received {received} messages (expected {expected})")


if __name__ == "__main__":
    main()
