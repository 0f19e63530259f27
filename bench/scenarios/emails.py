"""The `emails` scenario: the `email` task against an SMTP sink in another process, as
shipped and one message at a time (bench/email_throughput.py's functions).

    python -m bench.scenarios.emails emails --url U ... --out result.json --workdir /tmp/x
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench import profile
from bench.child import ChildArgs, ChildResult
from bench.drivers.cronloop_fleet import WorkerError, fleet_main


def emails(args: ChildArgs) -> ChildResult:
    """bench/email_throughput.py's measurement: queue `messages` into the outbox, call the
    `email` task until it is empty, against an aiosmtpd sink in another process that
    answers each message after `smtp_latency_ms` (0: at once; 20: a real relay's
    latency). Once with the task's shipped options (concurrency 4, batch 100), once one
    at a time as iTop does it (`serial_messages`, default at most 2,000: its rate is
    steady by then), and with `also_concurrency` senders if given. CPU per message is
    this process's (the task's side; the sink is another process)."""
    from bench import email_throughput as et

    p = args.params
    n = int(p.get("messages", 10_000))
    latency_ms = float(p.get("smtp_latency_ms", 0))
    plan = Plan(n, int(p.get("serial_messages", min(n, 2000))), p.get("also_concurrency"))
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
        rates = asyncio.run(email_rates(args.async_url, port, plan))
    finally:
        server.stdin.close()
        try:
            received = server.stdout.read().strip()
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
    (shipped, shipped_cpu), (serial, serial_cpu) = rates["shipped"], rates["serial"]
    result = ChildResult(
        figures={
            "msgs_per_s": round(shipped, 1),
            "msgs_per_s_serial": round(serial, 1),
            "speedup": round(shipped / serial, 2),
            "cpu_ms_per_msg": round(shipped_cpu, 3),
            "cpu_ms_per_msg_serial": round(serial_cpu, 3),
        }
    )
    if "more" in rates:
        more, more_cpu = rates["more"]
        result.figures.update(
            msgs_per_s_more=round(more, 1),
            speedup_more=round(more / serial, 2),
            cpu_ms_per_msg_more=round(more_cpu, 3),
        )
        result.notes.append(f"emails: _more = concurrency {plan.more}, batch 100")
    result.figures["smtp_received"] = int(received) if received.isdigit() else -1
    result.notes.append(
        f"emails: {n} messages per run, SMTP sink latency {latency_ms:g} ms per message; "
        f"sink received {received or '?'} (expected {plan.expected}); one at a time = one "
        f"message per run ({plan.serial} messages), an SMTP session each (iTop)"
    )
    return result


@dataclass(frozen=True)
class Plan:
    messages: int  # with the shipped options (and with `more` senders)
    serial: int  # one at a time
    more: int | None  # a second concurrency, or None

    @property
    def expected(self) -> int:
        return self.messages * (2 if self.more else 1) + self.serial


async def email_rates(async_url: str, port: int, plan: Plan) -> dict[str, tuple[float, float]]:
    """(messages/s, CPU ms per message) with the shipped options, one at a time as iTop
    sends them (one message per run, an SMTP session each; see
    `measure_one_at_a_time`), and with `plan.more` senders."""
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
        spy = profile.window(time.time())  # --profile: the shipped task's run (and fill)
        shipped = await et.measure(engine, settings, plan.messages, smtp)
        profile.finish(spy)
        rates = {
            "shipped": _per_msg(shipped, plan.messages),
            # the baseline is slow: its rate is steady after a couple of thousand messages
            "serial": _per_msg(
                await et.measure_one_at_a_time(engine, settings, plan.serial, smtp), plan.serial
            ),
        }
        if plan.more:
            more = {**smtp, "concurrency": int(plan.more)}
            rates["more"] = _per_msg(
                await et.measure(engine, settings, plan.messages, more), plan.messages
            )
        return rates
    finally:
        await engine.dispose()


def _per_msg(throughput: Any, n: int) -> tuple[float, float]:
    return throughput.msgs_per_s, throughput.cpu_ms_per_msg(n)


SCENARIOS: dict[str, Callable[[ChildArgs], ChildResult]] = {
    "emails": emails,
    "emails+relay": emails,
}

if __name__ == "__main__":
    fleet_main(SCENARIOS)
