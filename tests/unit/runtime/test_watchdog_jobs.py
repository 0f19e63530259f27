"""The service's watchdog and jobs (`cli/run.py`'s `_loop_watchdog`): a job that blocks
the loop is told from the tasks running beside it by its code, so they get no strike for
it; the job's own strike is counted at the takeover of its attempt (the job queue)."""

from __future__ import annotations

import sys

from sqlalchemy.engine import make_url

from cronloop.cli.run import _loop_watchdog
from cronloop.config.settings import Settings
from cronloop.definitions.jobs import JobSpec
from cronloop.definitions.registry import Registry, TaskSpec
from cronloop.domain.jobs import RetryRule

UNREACHABLE = make_url("mysql+aiomysql://nobody@127.0.0.1:1/none")  # a strike would fail


def hook() -> None: ...


def report() -> None: ...


def registry() -> Registry:
    task = TaskSpec(name="report", func=report, schedule=None, timeout_s=10.0)
    job = JobSpec(name="hook", func=hook, timeout_s=10.0, retry=RetryRule(), concurrency=None)
    return Registry({"report": task}, {"hook": job})


def test_a_job_that_blocks_the_loop_is_the_culprit_and_no_task_is_struck() -> None:
    dog = _loop_watchdog(Settings(watchdog_s=1.0), registry(), UNREACHABLE, lambda: [])
    frame = sys._getframe()

    class FakeFrame:  # the loop thread's stack: the job's handler called from here
        f_code = hook.__code__
        f_back = frame

    assert dog.culprits(["hook", "report"], FakeFrame()) == ["hook"]  # type: ignore[arg-type]
    assert dog.on_stall is not None
    dog.on_stall(["hook"], 31.0)  # no task to strike: the database is not even asked
