"""The routes: what each URL answers, as an aiohttp `Application`.

GET `/metrics`, `/healthz`, `/readyz`, `/api/tasks`, `/api/history`, `/`; POST
`/api/tasks/{name}/trigger|pause|resume` behind the bearer token. Every database call
goes through the worker's error policy and answers 503 when the database is away. It
never knows how the listener is bound.
"""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from cronloop.cli.display import history_items, status_items
from cronloop.config.values import Secret
from cronloop.domain.records import TriggerResult, UnknownTask
from cronloop.runtime.dbhealth import DatabaseFailure
from cronloop.web.auth import TokenCheck, Verdict
from cronloop.web.metrics import Metrics
from cronloop.web.page import render_page
from cronloop.web.table import TableReader
from cronloop.web.view import WorkerView

log = structlog.get_logger("cronloop.web")

HISTORY_LIMIT_MAX = 500
# the page is never framed (clickjacking), sniffed, cached, nor leaks its URL
PAGE_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}


def build_app(
    view: WorkerView, table: TableReader, metrics: Metrics, token: Secret | None
) -> web.Application:
    routes = Routes(view, table, metrics, TokenCheck(token, view.clock.monotonic))
    app = web.Application(client_max_size=64 * 1024)
    app.add_routes(
        [
            web.get("/", routes.page),
            web.get("/metrics", routes.metrics),
            web.get("/healthz", routes.healthz),
            web.get("/readyz", routes.readyz),
            web.get("/api/tasks", routes.tasks),
            web.get("/api/history", routes.history),
            web.post("/api/tasks/{name}/{action}", routes.act),
        ]
    )
    return app


class Routes:
    def __init__(
        self, view: WorkerView, table: TableReader, metrics: Metrics, auth: TokenCheck
    ) -> None:
        self.view = view
        self.table = table
        self.registry = metrics
        self.auth = auth

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(
            text=render_page(token_needed=self.auth.enabled),
            content_type="text/html",
            headers=PAGE_HEADERS,
        )

    async def metrics(self, request: web.Request) -> web.Response:
        body = await self.registry.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        age_s = self.view.heartbeat_age_s()
        ok = age_s < self.view.heartbeat_limit_s
        body = {"status": "ok" if ok else "stalled", "heartbeat_age_s": round(age_s, 3)}
        return web.json_response(body, status=200 if ok else 503)

    async def readyz(self, request: web.Request) -> web.Response:
        database = await self._reachable()
        schema = self.table.snapshot.schema_current
        draining = self.view.draining()
        ready = database and schema and not draining
        body = {
            "status": "ready" if ready else "not ready",
            "database": "up" if database else "down",
            "schema": "current" if schema else "stale",
            "draining": draining,
        }
        return web.json_response(body, status=200 if ready else 503)

    async def _reachable(self) -> bool:
        try:
            await self.view.health.call(self.view.store.database_now, what="web: readiness")
        except DatabaseFailure:
            return False
        return True

    async def tasks(self, request: web.Request) -> web.Response:
        try:
            states = await self.view.health.call(self.view.store.status, what="web: status")
        except DatabaseFailure:
            return _error(503, "the database is unreachable")
        return web.json_response(status_items(states), dumps=_dumps)

    async def history(self, request: web.Request) -> web.Response:
        name = request.query.get("task") or None
        text = request.query.get("limit", "50")
        if not text.isdigit() or not 0 < int(text) <= HISTORY_LIMIT_MAX:
            return _error(400, f"limit must be a number from 1 to {HISTORY_LIMIT_MAX}")
        try:
            entries = await self.view.health.call(
                lambda: self.view.store.history(name, limit=int(text)), what="web: history"
            )
        except DatabaseFailure:
            return _error(503, "the database is unreachable")
        return web.json_response(history_items(entries), dumps=_dumps)

    async def act(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        name = request.match_info["name"]
        if action not in ("trigger", "pause", "resume"):
            return _error(404, f"no action {action!r}: trigger, pause or resume")
        verdict = self.auth.check(request.headers.get("Authorization"), _peer(request))
        if verdict is not Verdict.OK:
            return _error(verdict.value, _DENIED[verdict])
        try:
            status, body = await self.view.health.call(
                lambda: self._apply(action, name), what=f"web: {action}"
            )
        except DatabaseFailure:
            return _error(503, "the database is unreachable")
        log.info(
            "web API: task steered", task=name, action=action, peer=_peer(request), status=status
        )
        return web.json_response(body, status=status)

    async def _apply(self, action: str, name: str) -> tuple[int, dict[str, Any]]:
        """One store verb; an unknown task is an answer, not a database failure."""
        try:
            return await self._verb(action, name)
        except UnknownTask:
            return 404, {"error": f"no task named {name!r}"}

    async def _verb(self, action: str, name: str) -> tuple[int, dict[str, Any]]:
        store = self.view.store
        if action == "trigger":
            result = await store.trigger(name, self.view.clock.now())
            if result == TriggerResult.NOT_ACTIVE:
                return 409, {"error": f"{name} is not active; resume it first"}
            self.view.wake()
            return 200, {"task": name, "triggered": True}
        if action == "pause":
            old = await store.pause(name)
            return 200, {"task": name, "was": old, "status": "paused"}
        old = await store.resume(name)
        if old in ("removed", "disabled"):
            return 409, {"error": f"{name} is {old}: its configuration decides that, not resume"}
        self.view.wake()
        return 200, {"task": name, "was": old, "status": "active"}


_DENIED = {
    Verdict.READ_ONLY: "read-only: this worker has no http_token",
    Verdict.DENIED: "a valid bearer token is needed (Authorization: Bearer ...)",
    Verdict.THROTTLED: "too many failed attempts; try again later",
}


def _peer(request: web.Request) -> str:
    return request.remote or "unix socket"


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _dumps(value: Any) -> str:
    import json

    return json.dumps(value, default=str)
