"""A job for the chaos tests, loaded by real workers with `--task_modules=chaos_jobs`.

Each attempt of `chaos_job` writes one row in `cronloop_chaos_job_exec` through `ctx.db`
once its work is done (job number, attempt, pid, when), as an application's handler
would write its effect: the tests read that table, not cronloop's, to count lost and
duplicated jobs. The row commits before cronloop records the attempt, so an attempt
whose record is lost (its worker killed, its lease lost in an outage) is seen twice:
that is the at-least-once window the tests bound. `CHAOS_JOB_S` is each attempt's work
(default 0.02 s). `loop_blocker` blocks the event loop (`time.sleep` in a coroutine) for
`CHAOS_BLOCK_S` seconds (default 30): the watchdog's business.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime

from sqlalchemy import BigInteger, Column, Integer, MetaData, Table, insert

from cronloop import TaskContext, job
from cronloop.store.sql.tables import UTCDateTime

WORK_S = float(os.environ.get("CHAOS_JOB_S", "0.02"))

metadata = MetaData()
job_executions = Table(
    "cronloop_chaos_job_exec",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("n", Integer, nullable=False),
    Column("job_id", BigInteger, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("finished", UTCDateTime(), nullable=False),
)

DDL = """
CREATE TABLE cronloop_chaos_job_exec (
    id BIGINT AUTO_INCREMENT PRIMARY KEY,
    n INT NOT NULL,
    job_id BIGINT NOT NULL,
    pid INT NOT NULL,
    finished DATETIME(6) NOT NULL,
    KEY ix_chaos_job_n (n)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""


@job(max_retries=5, retry_delay_s=0.5, exponential_delay=False, timeout=30)
async def chaos_job(ctx: TaskContext, n: int) -> None:
    ctx.log.info("chaos job began", n=n)
    await asyncio.sleep(WORK_S)
    await ctx.checkpoint()
    job_id = int(ctx.run_id.rsplit("-", 1)[1])
    async with ctx.db.begin() as session:
        await session.execute(
            insert(job_executions).values(
                n=n, job_id=job_id, pid=os.getpid(), finished=datetime.now(UTC)
            )
        )


@job(max_retries=5, retry_delay_s=0.5, timeout=60)
async def loop_blocker(ctx: TaskContext) -> None:
    ctx.log.info("loop blocker began")
    time.sleep(float(os.environ.get("CHAOS_BLOCK_S", "30")))  # noqa: ASYNC251  (the point)
