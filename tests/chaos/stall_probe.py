"""A loop that blocks itself, with the loop watchdog on: it must exit 70 on its own.

Run by `test_chaos_misbehave.py` as `python stall_probe.py DATABASE_URL WATCHDOG_S`: an
asyncio loop beats for two windows (the watchdog must stay quiet), prints `healthy`,
then a coroutine `sleeper` calls `time.sleep` for a minute. The watchdog thread must dump
the stacks, log the event, strike `sleeper` in the database and exit with code 70.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import time

from sqlalchemy.engine import make_url

from cronloop.runtime.watchdog import LoopWatchdog, strike_recorder
from cronloop.store.sql.store import short_lived_store
from cronloop.systemd import logs


async def sleeper() -> None:
    time.sleep(60)  # noqa: ASYNC251 - the point of the probe


async def main(url: str, watchdog_s: float) -> None:
    dog = LoopWatchdog(
        watchdog_s,
        running_tasks=lambda: ["sleeper", "bystander"],
        code_of={"sleeper": sleeper.__code__}.get,
        on_stall=strike_recorder(
            functools.partial(short_lived_store, make_url(url)), quarantine_strikes=2
        ),
    )
    dog.start()
    beating = asyncio.ensure_future(dog.beat())
    await asyncio.sleep(watchdog_s * 2)
    print("healthy", flush=True)
    await sleeper()
    beating.cancel()


if __name__ == "__main__":
    logs.configure("info", "json")
    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
    sys.exit(0)  # only reached if the watchdog failed
