"""The routes, served by aiohttp's real server in-process over the in-memory store.

What each endpoint answers with and without a token, the metrics as prometheus-client's
own parser reads them, readiness, and steering tasks through the store verbs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from cronloop.config.settings import Settings
from cronloop.config.values import Secret
from cronloop.domain.clock import FakeClock
from cronloop.domain.outcome import Outcome
from cronloop.domain.records import TaskDeclaration
from cronloop.runtime.dbhealth import DbHealth
from cronloop.store.memory import MemoryStore
from cronloop.store.sql.errors import ErrorKind, classify
from cronloop.web.server import WebServer
from cronloop.web.view import WorkerView

TOKEN = "web-T0ken"


@dataclass
class World:
    clock: FakeClock = field(default_factory=FakeClock)
    store: MemoryStore = field(default_factory=MemoryStore)
    running: Sequence[str] = ()
    draining: bool = False
    schema: bool = True
    woken: int = 0
    beat_age_s: float = 1.0
    health: DbHealth = field(init=False)
    server: WebServer | None = None

    def __post_init__(self) -> None:
        self.health = DbHealth(self.clock, lambda: 5.0, classify)

    def view(self) -> WorkerView:
        async def schema() -> bool:
            return self.schema

        def wake() -> None:
            self.woken += 1

        return WorkerView(
            store=self.store,  # the in-memory Store: the same contract as the SQL one
            health=self.health,
            clock=self.clock,
            running=lambda: self.running,
            periods=lambda: {"quick": 60.0, "later": 60.0},
            leases_lost=lambda: 2,
            draining=lambda: self.draining,
            heartbeat_age_s=lambda: self.beat_age_s,
            heartbeat_limit_s=30.0,
            schema_current=schema,
            sessions=None,
            wake=wake,
        )


async def _serve(world: World, token: str | None) -> tuple[WebServer, TestClient]:
    now = world.clock.now()
    await world.store.sync_tasks(
        [
            TaskDeclaration("quick", "every 60s", 10, now),
            TaskDeclaration("later", "every 60s", 10, now + timedelta(hours=1)),
        ]
    )
    settings = Settings(http_listen="127.0.0.1:1", http_token=Secret(token) if token else None)
    server = WebServer(settings, world.view())
    client = TestClient(TestServer(server._runner.app))
    await client.start_server()
    return server, client


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
async def client(world: World) -> AsyncIterator[TestClient]:
    server, client = await _serve(world, TOKEN)
    world.server = server
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def readonly(world: World) -> AsyncIterator[TestClient]:
    _, client = await _serve(world, None)
    try:
        yield client
    finally:
        await client.close()


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_metrics_parse_and_carry_the_names_ops_alert_on(
    world: World,
    client: TestClient,
) -> None:
    server = world.server
    assert server is not None
    server.metrics.run_started("quick", 0.004)
    server.metrics.run_ended("quick", Outcome.SUCCESS, 0.2)
    succeeded = world.clock.now().timestamp()
    server.metrics.run_ended("quick", Outcome.FAILED, 1.5)
    world.running = ("quick", "quick", "later")
    world.health.counts[ErrorKind.OUTAGE] += 3
    claims = await world.store.claim_due(world.clock.now(), 5)
    await server.table.refresh()
    assert claims  # quick is due and was claimed: the table now says it runs
    resp = await client.get("/metrics")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(await resp.text())}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert samples[("cronloop_runs_total", (("outcome", "success"), ("task", "quick")))] == 1
    assert samples[("cronloop_runs_total", (("outcome", "failed"), ("task", "quick")))] == 1
    assert samples[("cronloop_run_duration_seconds_count", (("task", "quick"),))] == 2
    assert samples[("cronloop_run_lateness_seconds_count", (("task", "quick"),))] == 1
    assert samples[("cronloop_runs_running", (("task", "quick"),))] == 2
    assert samples[("cronloop_leases_lost_total", ())] == 2
    assert samples[("cronloop_database_up", ())] == 1
    assert samples[("cronloop_database_errors_total", (("kind", "outage"),))] == 3
    assert samples[("cronloop_task_quarantined", (("task", "later"),))] == 0
    assert samples[("cronloop_task_period_seconds", (("task", "later"),))] == 60
    last = samples[("cronloop_task_last_success_timestamp_seconds", (("task", "quick"),))]
    assert last == succeeded  # known from the event, before the table says so
    next_run = samples[("cronloop_task_next_run_timestamp_seconds", (("task", "later"),))]
    assert next_run == (world.clock.now() + timedelta(hours=1)).timestamp()
    assert [s.labels["version"] for s in families["cronloop_build_info"].samples]
    assert not any(name.endswith("_created") for name, _ in samples)


async def test_health_and_readiness(world: World, client: TestClient) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200 and (await resp.json())["status"] == "ok"
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert await resp.json() == {
        "status": "ready",
        "database": "up",
        "schema": "current",
        "draining": False,
    }
    world.beat_age_s = 31.0
    assert (await client.get("/healthz")).status == 503
    world.draining = True
    resp = await client.get("/readyz")
    assert resp.status == 503 and (await resp.json())["draining"] is True


async def test_a_stale_schema_is_not_ready(world: World, client: TestClient) -> None:
    world.schema = False
    assert world.server is not None
    await world.server.table.refresh()
    resp = await client.get("/readyz")
    assert resp.status == 503 and (await resp.json())["schema"] == "stale"


async def test_the_task_list_is_what_status_json_gives(client: TestClient) -> None:
    resp = await client.get("/api/tasks")
    assert resp.status == 200
    tasks = {t["name"]: t for t in await resp.json()}
    assert set(tasks) == {"quick", "later"}
    assert tasks["quick"]["status"] == "active" and "consecutive_failures" in tasks["quick"]
    assert (await client.get("/api/history?limit=5")).status == 200
    assert (await client.get("/api/history?limit=0")).status == 400
    assert (await client.get("/api/history?limit=x")).status == 400


async def test_steering_needs_the_token(world: World, client: TestClient) -> None:
    assert (await client.post("/api/tasks/later/pause")).status == 401
    wrong = {"Authorization": "Bearer nope"}
    assert (await client.post("/api/tasks/later/pause", headers=wrong)).status == 401
    resp = await client.post("/api/tasks/later/pause", headers=AUTH)
    assert resp.status == 200 and (await resp.json())["was"] == "active"
    resp = await client.post("/api/tasks/later/trigger", headers=AUTH)
    assert resp.status == 409  # paused: resume first
    assert (await client.post("/api/tasks/later/resume", headers=AUTH)).status == 200
    resp = await client.post("/api/tasks/later/trigger", headers=AUTH)
    assert resp.status == 200
    state = {s.name: s for s in await world.store.status()}["later"]
    assert state.next_run is not None and state.next_run <= world.clock.now()
    assert world.woken == 2  # resume and trigger wake the loop
    assert (await client.post("/api/tasks/nope/trigger", headers=AUTH)).status == 404
    assert (await client.post("/api/tasks/later/explode", headers=AUTH)).status == 404
    assert (await client.get("/api/tasks/later/trigger")).status == 405


async def test_repeated_failures_are_throttled(client: TestClient) -> None:
    wrong = {"Authorization": "Bearer nope"}
    codes = [(await client.post("/api/tasks/later/pause", headers=wrong)).status for _ in range(6)]
    assert codes == [401] * 5 + [429]


async def test_without_a_token_the_api_is_read_only(readonly: TestClient) -> None:
    assert (await readonly.get("/api/tasks")).status == 200
    resp = await readonly.post("/api/tasks/later/pause", headers=AUTH)
    assert resp.status == 403 and "read-only" in (await resp.json())["error"]


async def test_the_page_is_html_for_phones(client: TestClient, readonly: TestClient) -> None:
    resp = await client.get("/")
    text = await resp.text()
    assert resp.status == 200 and resp.content_type == "text/html"
    assert 'name="viewport"' in text and "TOKEN_NEEDED=true" in text
    assert "TOKEN_NEEDED=false" in await (await readonly.get("/")).text()
