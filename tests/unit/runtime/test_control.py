"""How the loop stops its side loops: cancelled, waited for, never hung on one."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from cronloop.runtime.control import Control


async def test_side_loops_are_cancelled_and_awaited() -> None:
    async def forever() -> None:
        await asyncio.Event().wait()

    control = Control()
    loops = [asyncio.create_task(control.supervised(n, forever), name=n) for n in ("a", "b")]
    await asyncio.sleep(0)
    with capture_logs() as logs:
        await control.stop_side_loops(loops, timeout_s=5)
    assert all(t.cancelled() for t in loops) and logs == []


async def test_a_side_loop_that_loses_its_cancel_is_named_and_cancelled_again() -> None:
    """As the housekeeping loop did when a driver turned its cancel into an error: it went
    on to its next sleep, and the stop waited for it for ever."""
    swallowed = asyncio.Event()

    async def loses_one_cancel() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            swallowed.set()
        await asyncio.Event().wait()  # the next round's sleep

    control = Control()
    loop = asyncio.create_task(
        control.supervised("housekeeping", loses_one_cancel), name="housekeeping"
    )
    await asyncio.sleep(0)
    with capture_logs() as logs:
        await asyncio.wait_for(control.stop_side_loops([loop], timeout_s=0.05), 5)
    assert swallowed.is_set() and loop.cancelled()
    assert [(e["event"], e["loops"]) for e in logs] == [
        ("side loops did not stop when cancelled", ["housekeeping"])
    ]
