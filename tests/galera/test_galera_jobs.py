"""The job queue's contract suite (`tests/store/test_job_contract.py`) on a real 3-node
Galera cluster, each worker's store on a node of its own: w1 on node 0, w2 on node 1, w3
on node 2 (the table helpers, `enqueue` and the rows a test reads: node 0); and the
email outbox, claimed by the same code, drained by three senders on three nodes at once.

Every contract test runs here as it runs on one MariaDB server, with two differences a
Galera deployment has and the runtime handles:
- a lost race between nodes (SKIP LOCKED and row locks are local to one node; the loser
  is refused at COMMIT with a certification failure, 1213) is retried at once, as the
  worker loop's database policy does (`retry_conflicts` here);
- reads wait for what other nodes committed (`wsrep_sync_wait = 1` on these sessions):
  a test's next step must see the previous one, where a worker just polls again.

Run under the Galera lock: `flock /work/tools/galera.lock pytest tests/galera`.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from tests.support.galera import Cluster

# tests/store is not a package: its helpers go by their bare names, as its own tests use them
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "store"))

import test_job_contract as contract
from store_backends import SqlBackend

import cronloop.standard  # noqa: F401  (registers the standard tasks' tables)
from cronloop.standard.schema import metadata as tasks_metadata
from cronloop.store.interface import Store
from cronloop.store.sql.migrate import upgrade
from cronloop.store.sql.retry import retry_conflicts
from cronloop.store.sql.store import SqlStore
from cronloop.store.sql.tables import metadata

NODE_OF = {"w1": 0, "w2": 1, "w3": 2}
SYNC_READS = {"init_command": "SET SESSION wsrep_sync_wait = 1"}

# every contract test, collected here with this module's `backend`
for _name in dir(contract):
    if _name.startswith("test_"):
        globals()[_name] = getattr(contract, _name)


class ConflictRetrying:
    """A store whose verbs retry a lost race at once, as the worker loop's policy does."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        verb = getattr(self._store, name)
        if not asyncio.iscoroutinefunction(verb):
            return verb

        @functools.wraps(verb)
        async def retried(*args: Any, **kwargs: Any) -> Any:
            return await retry_conflicts(lambda: verb(*args, **kwargs), what=f"galera {name}")

        return retried


class GaleraBackend(SqlBackend):
    name = "galera"

    def __init__(self, engines: list[AsyncEngine]) -> None:
        super().__init__(engines[0])
        self.name = "galera"
        self.engines = engines

    def _make(self, worker_id: str, options: dict[str, Any]) -> Store:
        store = SqlStore(self.engines[NODE_OF.get(worker_id, 0)], worker_id=worker_id, **options)
        return ConflictRetrying(store)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def galera_jobs_db(galera: Cluster) -> Iterator[str]:
    """One database for the module, migrated once (emptied before each test)."""
    with galera.database("cronloop_gj") as name:

        async def migrate() -> None:
            engine = create_async_engine(galera.url(0, name))
            try:
                await upgrade(engine)
            finally:
                await engine.dispose()

        asyncio.run(migrate())
        yield name


@pytest.fixture
async def backend(galera: Cluster, galera_jobs_db: str) -> AsyncIterator[GaleraBackend]:
    engines = [
        create_async_engine(galera.url(i, galera_jobs_db), connect_args=SYNC_READS)
        for i in range(3)
    ]
    async with engines[0].begin() as conn:
        for table in [*reversed(tasks_metadata.sorted_tables), *reversed(metadata.sorted_tables)]:
            await conn.execute(delete(table))
    sql = GaleraBackend(engines)
    try:
        yield sql
    finally:
        await sql.close()
        for engine in engines:
            await engine.dispose()


async def test_three_senders_on_three_nodes_send_each_email_once(
    backend: GaleraBackend, tmp_path: Path
) -> None:
    """The outbox's claim is the job queue's: senders on different nodes race for the
    same rows (SKIP LOCKED is local to a node; the loser's COMMIT fails certification
    and its claim is retried), and every message is sent exactly once."""
    from cronloop.config.settings import Settings
    from cronloop.standard.email import send_queued_email
    from cronloop.standard.outbox import outbox, queue_email
    from cronloop.testing import make_context, options_of

    sessions = async_sessionmaker(backend.engines[0], expire_on_commit=False)
    ids = [
        await queue_email(sessions, to="a@example.org", subject=f"s {i}", body_text="b")
        for i in range(90)
    ]
    plain = [  # wsrep_sync_wait 0, as a worker runs
        create_async_engine(e.url.render_as_string(hide_password=False)) for e in backend.engines
    ]
    try:
        runs = [
            send_queued_email(
                make_context(
                    engine,
                    name="email",
                    settings=Settings(),
                    options=options_of(
                        send_queued_email, file_dir=str(tmp_path), batch_size=10, concurrency=2
                    ),
                )
            )
            for engine in plain
        ]
        results = await asyncio.gather(*runs)
    finally:
        for engine in plain:
            await engine.dispose()
    sent = [int(str(r).split(",")[0].split()[1]) for r in results if r is not None]
    assert sum(sent) == len(ids), results  # a row sent twice would count twice
    async with backend.engines[0].connect() as conn:
        assert (await conn.execute(select(outbox))).all() == []
