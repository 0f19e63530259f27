"""The job queue through the real CLI: workers in subprocesses drain enqueued jobs, each
exactly once, on SQLite and MariaDB; a worker killed with -9 in the middle of a job
loses nothing: the job is taken over once its lease expires and done once; three workers
draining one queue, one of them killed, lose nothing and repeat only what the killed one
was running (the at-least-once window); a job that kills every worker that runs it is
quarantined at its `quarantine_strikes`-th takeover, shown by `jobs` and `status`, and run
again only by `retry`."""

from __future__ import annotations

import asyncio
import json
import signal
from collections import Counter
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from cronloop import enqueue
from cronloop.store.sql.tables import jobs
from tests.acceptance.conftest import Cli
from tests.support.worker import wait_for_total

JOBS_MODULE = """
import asyncio, os
from pathlib import Path
from cronloop import job, TaskContext

LEDGER = Path(os.environ["JOB_LEDGER"])

@job(max_retries=2, retry_delay_s=0)
async def note(ctx: TaskContext, i: int) -> None:
    with LEDGER.open("a") as f:
        f.write(f"note {i}\\n")

@job()
async def tick(ctx: TaskContext, i: int) -> None:
    await asyncio.sleep(0.02)
    with LEDGER.open("a") as f:
        f.write(f"tick {i}\\n")

@job(timeout=120)
async def slow(ctx: TaskContext, i: int) -> None:
    marker = LEDGER.with_suffix(f".started{i}")
    first = not marker.exists()
    marker.touch()
    ctx.log.info("slow began", i=i, first=first)
    while first:  # the first attempt waits to be killed
        await ctx.checkpoint()
        await asyncio.sleep(0.05)
    with LEDGER.open("a") as f:
        f.write(f"slow {i}\\n")

@job()
async def poison(ctx: TaskContext, i: int) -> None:
    ctx.log.info("poison began")
    await asyncio.sleep(0.5)  # while the bystanders run
    os.kill(os.getpid(), 9)  # takes its worker down, as a segfault or an OOM kill would

@job()
async def bystander(ctx: TaskContext, i: int) -> None:
    await asyncio.sleep(1.0)
    with LEDGER.open("a") as f:
        f.write(f"bystander {i}\\n")
"""
MODULES = "--task_modules=qjobs"


def prepare(cli: Cli) -> Path:
    cli.write_module("qjobs", JOBS_MODULE)
    ledger = cli.cwd / "ledger.txt"
    cli.env["JOB_LEDGER"] = str(ledger)
    cli.ok("migrate", MODULES)
    return ledger


def async_url(cli: Cli) -> str:
    url = sa.make_url(cli.inspect_url)
    driver = "sqlite+aiosqlite" if url.drivername.startswith("sqlite") else "mysql+aiomysql"
    return url.set(drivername=driver).render_as_string(hide_password=False)


def enqueue_many(cli: Cli, name: str, count: int) -> list[int]:
    async def go() -> list[int]:
        engine = create_async_engine(async_url(cli), poolclass=NullPool)
        try:
            return [await enqueue(engine, name, {"i": i}) for i in range(count)]
        finally:
            await engine.dispose()

    return asyncio.run(go())


def job_rows(cli: Cli) -> list[dict[str, object]]:
    engine = sa.create_engine(cli.inspect_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(jobs).order_by(jobs.c.id))]
    finally:
        engine.dispose()


def test_a_worker_drains_the_queue_each_job_once(cli: Cli) -> None:
    ledger = prepare(cli)
    enqueue_many(cli, "note", 40)
    assert cli.ok("enqueue", "note", "--args", '{"i": 40}', MODULES).out.strip().isdigit()
    typo = cli.run("enqueue", "ntoe", "--args", "{}", MODULES)  # queued for nobody: refused
    assert typo.rc == 1 and "no job kind 'ntoe'" in typo.err and "note" in typo.err
    cli.ok("run", "--once", MODULES)
    assert sorted(ledger.read_text().split("\n")[:-1]) == sorted(f"note {i}" for i in range(41))
    counts = json.loads(cli.ok("jobs", "--json", MODULES).out)
    assert [(c["job"], c["state"], c["count"]) for c in counts] == [("note", "done", 41)]
    assert "Queue: 41 done" in cli.ok("status", MODULES).out


def test_a_job_killed_mid_run_is_taken_over_after_its_lease(cli: Cli) -> None:
    ledger = prepare(cli)
    [job_id] = enqueue_many(cli, "slow", 1)
    args = (MODULES, "--lease_s=2", "--poll_interval=0.5")
    first = cli.start(*args)
    first.wait_for("slow began", first=True)
    first.kill()
    second = cli.start(*args)
    second.wait_for("slow began", first=False, timeout=20)
    second.wait_for("job finished", outcome="success", job_id=job_id, timeout=20)
    second.signal(signal.SIGTERM)
    assert second.wait() == 0
    assert ledger.read_text() == "slow 0\n"
    [row] = job_rows(cli)
    assert (row["state"], row["attempts"], row["lease_token"]) == ("done", 2, None)


def test_workers_share_a_queue_and_one_killed_loses_nothing(cli: Cli) -> None:
    ledger = prepare(cli)
    total = 150
    enqueue_many(cli, "tick", total)
    args = (MODULES, "--lease_s=2", "--poll_interval=0.5", "--max_concurrency=4")
    workers = [cli.start(*args) for _ in range(3)]
    wait_for_total(workers, "job finished", 20, timeout=30, outcome="success")
    workers[0].kill()
    wait_for_total(workers, "job finished", total, timeout=60, outcome="success", recorded=True)
    for worker in workers[1:]:
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0
    rows = job_rows(cli)
    assert {r["state"] for r in rows} == {"done"} and len(rows) == total
    lines = Counter(ledger.read_text().split("\n")[:-1])
    assert set(lines) == {f"tick {i}" for i in range(total)}  # none lost
    repeated = {int(line.split()[1]) for line, n in lines.items() if n > 1}
    taken_over = {json.loads(str(r["args"]))["i"] for r in rows if r["attempts"] == 2}
    assert repeated <= taken_over  # only attempts the killed worker was running
    assert len(taken_over) <= 4 and all(r["attempts"] <= 2 for r in rows)


def test_a_job_that_kills_its_workers_is_quarantined(cli: Cli) -> None:
    """The poison job's first crash strikes the three bystanders running beside it too;
    they are then taken over one at a time (a suspect runs beside no other suspect), so
    its second crash takes none of them down, and only the poison job is quarantined."""
    ledger = prepare(cli)
    args = (MODULES, "--lease_s=2", "--poll_interval=0.2", "--quarantine_strikes=2")

    async def queue() -> int:
        engine = create_async_engine(async_url(cli), poolclass=NullPool)
        try:
            for i in range(3):  # first in line: they run beside the poison job
                await enqueue(engine, "bystander", {"i": i}, priority=1)
            return await enqueue(engine, "poison", {"i": 0})
        finally:
            await engine.dispose()

    job_id = asyncio.run(queue())
    for _ in range(2):  # the first attempt, then the first takeover (strike 1)
        worker = cli.start(*args)
        worker.wait_for("poison began", timeout=20)
        assert worker.wait(timeout=20) == -signal.SIGKILL
    third = cli.start(*args)
    third.wait_for("job quarantined: its worker was lost", job_id=job_id, strikes=2, timeout=20)
    enqueue_many(cli, "note", 3)  # the queue goes on
    wait_for_total([third], "job finished", 3, timeout=20, outcome="success", job="note")
    third.signal(signal.SIGTERM)
    assert third.wait() == 0
    assert not third.find("poison began")
    done = Counter(ledger.read_text().split("\n")[:-1])
    assert set(done) == {"bystander 0", "bystander 1", "bystander 2", "note 0", "note 1", "note 2"}
    counts = {(c["job"], c["state"]) for c in json.loads(cli.ok("jobs", "--json", MODULES).out)}
    assert counts == {("bystander", "done"), ("note", "done"), ("poison", "quarantined")}
    assert "1 quarantined" in cli.ok("status", MODULES).out
    rows = {r["id"]: r for r in job_rows(cli)}
    assert [r["strikes"] for r in rows.values() if r["kind"] == "bystander"] == [1, 1, 1]
    row = rows[job_id]
    assert (row["state"], row["strikes"], row["attempts"]) == ("quarantined", 2, 2)
    assert "cronloop retry" in str(row["last_error"])
    assert f"job {job_id}: quarantined -> planned" in cli.ok("retry", str(job_id), MODULES).out
    [row] = [r for r in job_rows(cli) if r["id"] == job_id]
    assert (row["state"], row["strikes"]) == ("planned", 0)
