"""The `emails` scenario: the `email` task against an SMTP sink in another process, as
shipped and one message at a time (bench/email_throughput.py's functions).

    python -m bench.scenarios.emails emails --url U ... --out result.json --workdir /tmp/x
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable

from bench.child import ChildArgs, ChildResult
from bench.drivers.cronloop_fleet import (
    WorkerError,
    fleet_main,
)


def emails(args: ChildArgs) -> ChildResult:
    """bench/email_throughput.py's measurement: queue `messages` into the outbox, call the
    `email` task until it is empty, against an aiosmtpd sink in another process. Once
    with the task's shipped options (concurrency 4, batch 100), once one at a time as iTop
    does it (at most 2,000 messages: its rate is steady by then)."""
    from bench import email_throughput as et

    n = int(args.params.get("messages", 10_000))
    latency_ms = float(args.params.get("smtp_latency_ms", 0))
    port = et.free_port()
    server = subprocess.Popen(
        [sys.executable, et.__file__, "--serve", str(port), "--latency-ms", str(latency_ms)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdin is not None and server.stdout is not None
    received = ""
    try:
        if server.stdout.readline().strip() != "ready":
            raise WorkerError("the SMTP sink did not start")
        shipped, serial = asyncio.run(email_rates(args.async_url, port, n))
    finally:
        server.stdin.close()
        try:
            received = server.stdout.read().strip()
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
    result = ChildResult(
        figures={
            "msgs_per_s": round(shipped, 1),
            "msgs_per_s_serial": round(serial, 1),
            "speedup": round(shipped / serial, 2),
        }
    )
    result.figures["smtp_received"] = int(received) if received.isdigit() else -1
    result.notes.append(
        f"emails: {n} messages per run, SMTP sink latency {latency_ms:g} ms; "
        f"sink received {received or '?'} (expected {n + min(n, 2000)}); "
        "one at a time = one message per run, an SMTP session each (iTop)"
    )
    return result


async def email_rates(async_url: str, port: int, n: int) -> tuple[float, float]:
    """Messages/s with the shipped options, then one at a time as iTop sends them (one
    message per run, an SMTP session each; see `measure_one_at_a_time`)."""
    import logging

    import structlog

    from bench import email_throughput as et
    from cronloop.config.settings import Settings
    from cronloop.store.sql.engine import create_engine
    from cronloop.store.sql.migrate import upgrade

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    settings = Settings(database_url=async_url)
    engine = create_engine(settings)
    try:
        await upgrade(engine)
        smtp = {
            "transport": "smtp",
            "smtp_host": "127.0.0.1",
            "smtp_port": port,
            "sender": "bench@example.org",
        }
        shipped = await et.measure(engine, settings, n, smtp)
        # the baseline is slow: its rate is steady after a couple of thousand messages
        serial = await et.measure_one_at_a_time(engine, settings, min(n, 2000), smtp)
        return shipped, serial
    finally:
        await engine.dispose()


SCENARIOS: dict[str, Callable[[ChildArgs], ChildResult]] = {"emails": emails}

if __name__ == "__main__":
    fleet_main(SCENARIOS)
