"""The embedded HTTP server of a real worker: /metrics parsed by prometheus-client's
parser, the health checks, the web API with and without its token, and the refusals.

Each worker is a real `cronloop run` subprocess with `http_listen` on a free port (or a
unix socket); the tests wait on its log lines ("http server listening", "run finished"),
never on the clock.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.acceptance.conftest import Cli
from tests.support.http import call, free_port
from tests.support.worker import WorkerProcess

TOKEN = "acceptance-T0ken-9f2"
METRICS = {
    "cronloop_runs",
    "cronloop_run_duration_seconds",
    "cronloop_run_lateness_seconds",
    "cronloop_task_last_success_timestamp_seconds",
    "cronloop_task_next_run_timestamp_seconds",
    "cronloop_runs_running",
    "cronloop_task_quarantined",
    "cronloop_leases_lost",
    "cronloop_database_up",
    "cronloop_database_errors",
    "cronloop_build_info",
    "cronloop_outbox_messages",
    "cronloop_outbox_oldest_planned_age_seconds",
}


def start_web(
    cli: Cli, tasks: str, *args: str, token: str | None = TOKEN
) -> tuple[WorkerProcess, str]:
    listen = f"127.0.0.1:{free_port()}"
    env = {"CRONLOOP_HTTP_TOKEN": token} if token else None
    worker = cli.start(f"--http_listen={listen}", *args, tasks=tasks, env=env)
    worker.wait_for("http server listening", listen=listen)
    return worker, listen


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_worker_serves_metrics_health_and_the_api(cli: Cli) -> None:
    worker, listen = start_web(cli, "quick,boom")
    worker.wait_for("run finished", task="quick")
    worker.wait_for("run finished", task="boom")

    reply = call(listen, "GET", "/metrics")
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/plain")
    families = {f.name for f in text_string_to_metric_families(reply.text)}
    assert families >= METRICS, METRICS - families
    found = samples(reply.text)
    assert found[("cronloop_runs_total", (("outcome", "success"), ("task", "quick")))] == 1
    assert found[("cronloop_runs_total", (("outcome", "failed"), ("task", "boom")))] == 1
    assert found[("cronloop_run_lateness_seconds_count", (("task", "quick"),))] == 1
    assert found[("cronloop_database_up", ())] == 1
    assert found[("cronloop_outbox_messages", (("state", "planned"),))] == 0

    assert call(listen, "GET", "/healthz").json()["status"] == "ok"
    ready = call(listen, "GET", "/readyz")
    assert ready.status == 200 and ready.json()["database"] == "up"
    tasks = {t["name"]: t for t in call(listen, "GET", "/api/tasks").json()}
    assert tasks["quick"]["last_outcome"] == "success" and tasks["boom"]["last_outcome"] == "failed"
    history = call(listen, "GET", "/api/history?task=boom").json()
    assert history[0]["error"].startswith("RuntimeError: kaboom")

    assert call(listen, "POST", "/api/tasks/quick/trigger").status == 401
    assert call(listen, "POST", "/api/tasks/quick/trigger", token="wrong").status == 401
    mark = worker.mark()
    assert call(listen, "POST", "/api/tasks/quick/trigger", token=TOKEN).status == 200
    worker.wait_for("run finished", task="quick", since=mark)  # well before its hour
    assert call(listen, "POST", "/api/tasks/boom/pause", token=TOKEN).status == 200
    assert cli.status()["boom"]["status"] == "paused"
    assert call(listen, "POST", "/api/tasks/boom/resume", token=TOKEN).status == 200
    assert call(listen, "POST", "/api/tasks/nope/resume", token=TOKEN).status == 404

    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0
    assert worker.find("web API: authentication failed"), "a failed attempt is logged"
    assert not [line for line in worker.lines if TOKEN in line or "wrong" in line]
    assert set(worker.errors()) <= {"task raised"}  # boom's, nothing of the server's


def test_readiness_says_draining_while_the_worker_drains(sqlite_cli: Cli) -> None:
    worker, listen = start_web(sqlite_cli, "long", "--shutdown_grace=20")
    worker.wait_for("long started")
    worker.signal(signal.SIGTERM)
    worker.wait_for("draining")
    ready = call(listen, "GET", "/readyz")
    assert ready.status == 503 and ready.json()["draining"] is True
    assert call(listen, "GET", "/healthz").status == 200  # alive: not to be restarted
    assert worker.wait() == 0


def test_without_a_token_the_api_is_read_only_over_a_unix_socket(
    sqlite_cli: Cli, tmp_path: Path
) -> None:
    listen = f"unix:{tmp_path / 'http.sock'}"
    worker = sqlite_cli.start(f"--http_listen={listen}", tasks="quick")
    worker.wait_for("http server listening", api="read-only")
    assert call(listen, "GET", "/api/tasks").status == 200
    reply = call(listen, "POST", "/api/tasks/quick/trigger", token=TOKEN)
    assert reply.status == 403 and "read-only" in reply.json()["error"]
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0
    assert not (tmp_path / "http.sock").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--http_listen=0.0.0.0:9187"], "not a loopback address"),
        (["--http_listen=localhost"], "http_listen = 'localhost': expected host:port"),
        ([f"--http_token={TOKEN}"], "do not put a password on the command line"),
    ],
)
def test_refused_configurations_exit_78(sqlite_cli: Cli, args: list[str], message: str) -> None:
    result = sqlite_cli.run("run", *args, tasks="quick")
    assert result.rc == 78, str(result)
    assert message in result.err and TOKEN not in result.err + result.out


def test_a_taken_port_exits_78_naming_the_setting(sqlite_cli: Cli) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = sqlite_cli.run("run", f"--http_listen=127.0.0.1:{port}", tasks="quick")
    assert result.rc == 78, str(result)
    assert f"http_listen = 127.0.0.1:{port}: cannot listen" in result.err
