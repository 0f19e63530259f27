"""The monitoring kit (monitoring/) against a real worker: `promtool check metrics` on its
/metrics, `promtool check rules` and `promtool test rules` on the alerts, every metric
the alerts and the Grafana dashboard name exists in what the worker serves, and a real
Prometheus scraping a real worker with the alert rules loaded: every dashboard query
returns data, every rule evaluates, the quarantine alert fires.

Skipped without promtool and prometheus (Debian's `prometheus` package), except under
`CRONLOOP_REQUIRE_PROMTOOL=1` (CI), where a missing one fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.acceptance.conftest import Cli
from tests.acceptance.test_web import start_web
from tests.support.http import call, free_port

KIT = Path(__file__).resolve().parents[2] / "monitoring"
RULES = KIT / "cronloop-alerts.yml"
DASHBOARD = KIT / "cronloop-dashboard.json"
PROMTOOL_TIMEOUT_S = 60.0
NAME_RE = re.compile(r"\bcronloop_[a-z_]+")
SCRAPES = 4  # the 4th scrape begins a scrape interval after the 3rd was stored
SCRAPE_WAIT_S = 20.0  # Prometheus's start and the scrapes, at 1 s intervals
QUERY_TIMEOUT_S = 10.0


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CRONLOOP_REQUIRE_PROMTOOL") == "1":
            pytest.fail(f"CRONLOOP_REQUIRE_PROMTOOL=1 but no {name} (apt-get install prometheus)")
        pytest.skip(f"no {name} (apt-get install prometheus)")
    return found


@pytest.fixture
def promtool() -> str:
    return _binary("promtool")


@pytest.fixture
def prometheus() -> str:
    return _binary("prometheus")


def _promtool(promtool: str, *args: str, stdin: str | None = None) -> None:
    result = subprocess.run(
        [promtool, *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=KIT,
        timeout=PROMTOOL_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"


def test_the_rules_are_valid_and_fire_when_they_should(promtool: str) -> None:
    _promtool(promtool, "check", "rules", RULES.name)
    _promtool(promtool, "test", "rules", "cronloop-alerts.test.yml")


def test_a_real_worker_serves_every_metric_the_kit_uses(sqlite_cli: Cli, promtool: str) -> None:
    worker, listen = start_web(sqlite_cli, "quick")
    worker.wait_for("run finished", task="quick")
    text = call(listen, "GET", "/metrics").text
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0
    _promtool(promtool, "check", "metrics", stdin=text)

    served = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    exprs = [
        target["expr"]
        for panel in json.loads(DASHBOARD.read_text())["panels"]
        for target in panel["targets"]
    ]
    used = set(NAME_RE.findall(RULES.read_text())) | {
        name for expr in exprs for name in NAME_RE.findall(expr)
    }
    assert used, "the kit names no metric?"
    assert used <= served, f"named by the kit, not served: {sorted(used - served)}"


def _dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of the Grafana dashboard."""
    return [
        (panel["title"], target["expr"])
        for panel in json.loads(DASHBOARD.read_text())["panels"]
        for target in panel["targets"]
    ]


class ScrapeRelay:
    """What Prometheus scrapes: each GET is relayed to the worker's /metrics unchanged and
    counted, so the test waits for scrapes to happen instead of polling Prometheus."""

    def __init__(self, listen: str) -> None:
        self.cond = threading.Condition()
        self.scrapes = 0
        relay = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                reply = call(listen, "GET", "/metrics")
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.headers["content-type"])
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)
                with relay.cond:
                    relay.scrapes += 1
                    relay.cond.notify_all()

            def log_message(self, format: str, *args: Any) -> None:
                return None  # the test's output is not an access log

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count: int, timeout_s: float, why: Any) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: self.scrapes >= count, timeout_s):
                raise AssertionError(
                    f"{self.scrapes} of {count} scrapes in {timeout_s:g}s: {why()}"
                )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def prometheus_on(prometheus: str, tmp_path: Path) -> Iterator[Any]:
    """Start Prometheus (1 s scrapes and evaluations, the alert rules loaded) scraping a
    worker's `http_listen` through a `ScrapeRelay`; yields (relay, its API's base URL)."""
    started: list[tuple[subprocess.Popen[str], ScrapeRelay]] = []

    def start(listen: str) -> tuple[ScrapeRelay, str, subprocess.Popen[str]]:
        relay = ScrapeRelay(listen)
        config = tmp_path / "prometheus.yml"
        config.write_text(
            json.dumps(  # JSON is YAML
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(RULES)],
                    "scrape_configs": [
                        {"job_name": "cronloop", "static_configs": [{"targets": [relay.address]}]}
                    ],
                }
            )
        )
        port = free_port()
        proc = subprocess.Popen(
            [
                prometheus,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "prometheus.log").open("w"),
            text=True,
        )
        started.append((proc, relay))
        return relay, f"http://127.0.0.1:{port}", proc

    yield start
    for proc, relay in started:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        relay.close()


def _api(base: str, path: str, **query: str) -> Any:
    url = f"{base}/api/v1/{path}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=QUERY_TIMEOUT_S) as resp:
        body = json.load(resp)
    assert body["status"] == "success", f"{path} {query}: {body}"
    return body["data"]


def test_prometheus_scraping_a_real_worker_has_data_for_every_dashboard_query(
    sqlite_cli: Cli, prometheus_on: Any, tmp_path: Path
) -> None:
    # one timeout quarantines slowpoke: the quarantine panel and alert have something
    quarantine = sqlite_cli.run("run", "--once", "--quarantine_timeouts=1", tasks="slowpoke")
    assert quarantine.rc == 0, str(quarantine)
    worker, listen = start_web(sqlite_cli, "quick,boom,ticker,slowpoke")
    worker.wait_for("run finished", task="boom")
    relay, base, proc = prometheus_on(listen)
    log = tmp_path / "prometheus.log"
    relay.wait(SCRAPES, SCRAPE_WAIT_S, lambda: f"exit {proc.poll()}; {log.read_text()[-2000:]}")

    empty = [
        (title, expr)
        for title, expr in _dashboard_queries()
        if not _api(base, "query", query=expr)["result"]
    ]
    assert not empty, f"dashboard queries without data: {empty}"
    rules = [rule for group in _api(base, "rules")["groups"] for rule in group["rules"]]
    assert {r["name"] for r in rules} == set(re.findall(r"- alert: (\w+)", RULES.read_text()))
    assert [
        (r["name"], r["health"], r.get("lastError")) for r in rules if r["health"] != "ok"
    ] == []
    firing = {a["labels"]["alertname"]: a for a in _api(base, "alerts")["alerts"]}
    assert firing["CronloopTaskQuarantined"]["labels"]["task"] == "slowpoke"
    assert firing["CronloopTaskQuarantined"]["state"] == "firing"
    assert "CronloopWorkerDown" not in firing and "CronloopDatabaseDown" not in firing

    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0
