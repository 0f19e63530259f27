"""What the queue scenarios' no-op job does in a worker process, whichever queue runs it:
note (job number, enqueue time, start time) in memory, the process's CPU time at the
first and the latest start, a marker file once the expected number has started, and
everything as JSON when the process exits (atexit: after a graceful stop).

The same few microseconds for every system. Configured by the environment the bench
gives the worker: `BENCH_QUEUE_SAMPLES` (the JSON file), `BENCH_QUEUE_EXPECT` (how many
starts make the marker `<samples>.done`; a warm-up job makes `<samples>.ready`).
Knows nothing of any queue.
"""

from __future__ import annotations

import atexit
import json
import os
import time
from pathlib import Path

_OUT = os.environ.get("BENCH_QUEUE_SAMPLES")
_EXPECT = int(os.environ.get("BENCH_QUEUE_EXPECT", "0"))
_starts: list[tuple[int, float, float]] = []
_cpu: list[float] = []  # process CPU seconds at the first start, then at the latest


def started(i: int, enqueued_t: float) -> None:
    """Job number `i`, enqueued at `enqueued_t` (time.time() of the enqueuer), starts.
    A negative `i` is the warm-up job: it only makes the marker `<samples>.ready`."""
    if i < 0:
        if _OUT:
            Path(_OUT + ".ready").touch()
        return
    _starts.append((i, enqueued_t, time.time()))
    cpu = time.process_time()  # the whole process, every thread
    if _cpu:
        _cpu[1] = cpu
    else:
        _cpu.extend((cpu, cpu))
    if len(_starts) == _EXPECT and _OUT:
        Path(_OUT + ".done").touch()


def _dump() -> None:
    if _OUT:
        data = {"starts": _starts, "cpu": _cpu, "pid": os.getpid()}
        Path(_OUT).write_text(json.dumps(data), encoding="utf-8")


atexit.register(_dump)
