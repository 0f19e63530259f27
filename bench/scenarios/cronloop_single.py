"""cronloop's single-worker scenarios (lateness, scale, idle, burst, memory), on the
in-process driver `bench.drivers.cronloop_service`.

    python -m bench.scenarios.cronloop_single burst --url U --async-url AU \\
        --sync-url SU --params '{"runs": 1000}' --out result.json --workdir /tmp/w
"""

from __future__ import annotations

import bisect
import os
import signal
import socket
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta

from bench import profile
from bench.child import ChildArgs, ChildResult, child_main
from bench.databases import server_cpu_s, server_questions
from bench.drivers.cronloop_service import (
    LogWatcher,
    ServiceRun,
    expect,
    history,
    is_claim,
    questions_at,
    register,
    run_service,
    service_env,
    set_due,
    ts,
    window_figures,
    write_task_module,
)
from bench.measure import StatementCounter, cpu_ms_per, lateness_figures, percentile, rss_mb

SCRAPE_EVERY_S = 15.0  # Prometheus's default scrape interval


class Scraper:
    """With `"http": true` in the params: the HTTP server on (`http_listen` on a free
    port) and a thread that scrapes /metrics every `SCRAPE_EVERY_S`, as Prometheus would;
    the pair `X` / `X+http` shows what metrics cost the hot path."""

    def __init__(self, args: ChildArgs) -> None:
        self.on = bool(args.params.get("http"))
        self.params_every = args.params.get("scrape_every_s")  # 0: the server, no scrapes
        self.scrapes = 0
        self._stop = threading.Event()
        self.port = _free_port() if self.on else 0

    @property
    def service_args(self) -> list[str]:
        return [f"--http_listen=127.0.0.1:{self.port}"] if self.on else []

    def start(self) -> Scraper:
        every = self.params_every
        self.every_s = SCRAPE_EVERY_S if every is None else float(every)
        if self.on and self.every_s > 0:
            threading.Thread(target=self._run, daemon=True, name="scraper").start()
        return self

    def _run(self) -> None:
        url = f"http://127.0.0.1:{self.port}/metrics"
        while not self._stop.wait(self.every_s):
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    resp.read()
                self.scrapes += 1
            except OSError:
                continue  # not listening yet, or stopping

    def stop(self, result: ChildResult) -> None:
        self._stop.set()
        if self.on:
            result.figures["scrapes"] = self.scrapes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def periodic(
    args: ChildArgs,
    *,
    tasks: int,
    every_s: float,
    duration_s: float,
    warmup_s: float,
    idle_rows: int = 0,
) -> tuple[ChildResult, ServiceRun]:
    """`tasks` tasks every `every_s`, plus `idle_rows` tasks not due for a day; measured
    over `duration_s` of slots.

    The rows are parked a day ahead while the service starts (importing and syncing
    100,000 tasks takes a while, and start-up is not scheduling); once it logged "worker
    started", a thread releases them: first slots spread over one period beginning
    `warmup_s` later (more than a poll interval, so the worker's probe sees them), then
    stops the service with SIGTERM after the window, as systemd would."""
    write_task_module(args.workdir, tasks + idle_rows, every_s)
    service_env(args.workdir)
    far = datetime.now(UTC) + timedelta(days=1)
    register(args, tasks + idle_rows, lambda i: far)
    window: dict[str, float] = {}
    questions: dict[float, int | None] = {}
    db_cpu: dict[float, float | None] = {}
    spies: list[profile.PySpy | None] = []

    def release() -> None:
        t0 = datetime.now(UTC) + timedelta(seconds=warmup_s)
        set_due(args, tasks, lambda i: t0 + timedelta(seconds=every_s * i / tasks))
        window.update(start=t0.timestamp(), end=t0.timestamp() + duration_s)
        for when in window.values():
            questions_at(args.sync_url, when, questions, db_cpu)
        spies.append(profile.window(window["start"], window["end"]))
        time.sleep(max(0.0, window["end"] + 3.0 - time.time()))  # past the window's end
        os.kill(os.getpid(), signal.SIGTERM)

    server_cpu_s(args.sync_url)  # find the server's process now, not at the window's edge
    counter = StatementCounter(timed=is_claim).install()
    scraper = Scraper(args).start()
    run = run_service(
        args,
        # service_args: settings for an experiment (the scenarios run with the defaults)
        ["--max_lifetime=0", *args.params.get("service_args", []), *scraper.service_args],
        counter,
        before=lambda log: LogWatcher(log, 0, on_started=release).start(),
    )
    expect(run, (0,))
    for spy in spies:
        profile.finish(spy)
    start, end = window["start"], window["end"]
    rows = [r for r in history(args.sync_url) if start <= ts(r.scheduled_for) < end]
    done = [r for r in rows if r.outcome == "success"]
    lateness = [(ts(r.started) - ts(r.scheduled_for)) * 1000 for r in done]
    result = ChildResult()
    result.figures.update(lateness_figures(lateness))
    result.samples["lateness_ms"] = lateness
    window_figures(result, run, start, end, len(done), questions, db_cpu)
    expected = tasks * duration_s / every_s
    result.figures["missed"] = expected - len(done)
    result.figures["window_start"] = start
    if len(rows) != len(done):
        result.notes.append(f"{len(rows) - len(done)} runs did not end in success")
    scraper.stop(result)
    return result, run


def lateness(args: ChildArgs) -> ChildResult:
    p = args.params
    result, _ = periodic(
        args,
        tasks=p.get("tasks", 1000),
        every_s=p.get("every_s", 10),
        duration_s=p.get("duration_s", 60),
        warmup_s=p.get("warmup_s", 5),
    )
    result.figures.pop("window_start")
    return result


def scale(args: ChildArgs) -> ChildResult:
    p = args.params
    tasks = p.get("tasks", 1000)
    result, run = periodic(
        args,
        tasks=tasks,
        every_s=p.get("every_s", 10),
        duration_s=p.get("duration_s", 60),
        warmup_s=p.get("warmup_s", 10),
        idle_rows=p.get("rows", 100_000) - tasks,
    )
    result.figures.pop("window_start")
    timings = run.counter.timings_ms
    result.figures["claim_p50_ms"] = percentile(timings, 50)
    result.figures["claim_p99_ms"] = percentile(timings, 99)
    result.figures["claims"] = len(timings)
    return result


def idle(args: ChildArgs) -> ChildResult:
    p = args.params
    result, run = periodic(
        args,
        tasks=0,
        every_s=3600,
        duration_s=p.get("duration_s", 60),
        warmup_s=p.get("warmup_s", 5),
        idle_rows=p.get("tasks", 1000),
    )
    run_start = result.figures.pop("window_start")
    from cronloop.config.settings import Settings

    duration_s = p.get("duration_s", 60)
    polls = duration_s / Settings().poll_interval
    # count from the first probe in the window, over exactly `polls` poll intervals, so
    # the window's edges cannot add or drop a probe
    stamps = run.counter.stamps
    first = stamps[bisect.bisect_left(stamps, run_start)] if stamps else run_start
    result.figures["statements"] = run.counter.between(first, first + duration_s)
    result.figures["statements_per_poll"] = result.figures["statements"] / polls
    if "questions" in result.figures:
        result.figures["questions_per_poll"] = result.figures["questions"] / polls
    # no runs while idle: the CPU per poll interval instead
    result.figures["cpu_ms_per_poll"] = cpu_ms_per(
        result.figures["cpu_pct"] / 100 * duration_s, polls
    )
    for key in ("lateness_p50_ms", "lateness_p99_ms", "lateness_max_ms", "missed"):
        result.figures.pop(key, None)
    for key in ("cpu_ms_per_run", "db_cpu_ms_per_run", "statements_per_run", "questions_per_run"):
        result.figures.pop(key, None)
    result.samples.clear()
    return result


def burst(args: ChildArgs) -> ChildResult:
    """`runs` tasks all due at one instant T, a few seconds after the worker is up."""
    count = args.params.get("runs", 10_000)
    lead_s = args.params.get("lead_s", 6)
    write_task_module(args.workdir, count, 86400)
    service_env(args.workdir)
    due = datetime.now(UTC) + timedelta(seconds=lead_s + 3)  # + registering
    register(args, count, lambda i: due)
    if due < datetime.now(UTC) + timedelta(seconds=lead_s):
        due = datetime.now(UTC) + timedelta(seconds=lead_s)
        set_due(args, count, lambda i: due)
    questions: dict[float, int | None] = {}
    db_cpu: dict[float, float | None] = {}
    server_cpu_s(args.sync_url)  # find the server's process now, not at the instant
    questions_at(args.sync_url, due.timestamp(), questions, db_cpu)
    counter = StatementCounter(timed=is_claim).install()
    settings = list(args.params.get("service_args", []))
    scraper = Scraper(args).start()
    spy = profile.window(due.timestamp() - 0.05)  # the burst, until the service stops
    run = run_service(
        args,
        ["--max_lifetime=0", *settings, *scraper.service_args],
        counter,
        before=lambda log: LogWatcher(log, count).start(),
    )
    profile.finish(spy)
    expect(run, (0,))
    end = time.time()
    db_cpu_end = server_cpu_s(args.sync_url)
    questions[end] = server_questions(args.sync_url)
    rows = [r for r in history(args.sync_url) if r.outcome == "success"]
    starts = sorted(ts(r.started) for r in rows)
    last_end = max(ts(r.ended) for r in rows)
    t = due.timestamp()
    result = ChildResult()
    f = result.figures
    f["runs_per_s"] = len(rows) / (last_end - t)
    f["first_start_ms"] = (starts[0] - t) * 1000
    f["last_start_ms"] = (starts[-1] - t) * 1000
    window_figures(result, run, t, last_end, len(rows), {})
    c0 = db_cpu.get(t)
    if c0 is not None and db_cpu_end is not None:  # up to the exit: the last records
        f["db_cpu_ms_per_run"] = cpu_ms_per(db_cpu_end - c0, len(rows))
    q0, q1 = questions.get(t), questions.get(end)
    if q0 is not None and q1 is not None:
        f["questions"] = q1 - q0
        f["questions_per_run"] = f["questions"] / max(len(rows), 1)
    if len(rows) != count:
        result.notes.append(f"only {len(rows)} of {count} runs succeeded")
    scraper.stop(result)
    return result


def memory(args: ChildArgs) -> ChildResult:
    """`runs` runs in one process (tasks every `every_s`); RSS after the first 1,000 runs
    and at the end."""
    p = args.params
    count, tasks, every_s = p.get("runs", 100_000), p.get("tasks", 1000), p.get("every_s", 0.25)
    write_task_module(args.workdir, tasks, every_s)
    service_env(args.workdir)
    t0 = datetime.now(UTC) + timedelta(seconds=3)
    register(args, tasks, lambda i: t0 + timedelta(seconds=every_s * i / tasks))
    marks: dict[int, float] = {}

    def on_run(n: int) -> None:
        if n in (1, 1000):
            marks[n] = rss_mb()

    counter = StatementCounter().install()
    run = run_service(
        args,
        ["--max_lifetime=0"],
        counter,
        before=lambda log: LogWatcher(log, count, on_run).start(),
    )
    expect(run, (0,))
    end_rss = run.sampler.points[-1][2]
    peak = max(pt[2] for pt in run.sampler.points)
    rows = history(args.sync_url)
    result = ChildResult()
    f = result.figures
    f["runs"] = sum(1 for r in rows if r.outcome == "success")
    f["rss_after_1000_mb"] = marks.get(1000, float("nan"))
    f["rss_end_mb"] = end_rss
    f["rss_peak_mb"] = peak
    f["rss_growth_pct"] = 100 * (end_rss - f["rss_after_1000_mb"]) / f["rss_after_1000_mb"]
    f["elapsed_s"] = run.sampler.points[-1][0] - run.started
    f["cpu_ms_per_run"] = cpu_ms_per(
        run.sampler.cpu_s(run.started, run.sampler.points[-1][0]), f["runs"]
    )
    result.samples["rss_mb"] = [pt[2] for pt in run.sampler.points]
    return result


SCENARIOS = {
    "lateness": lateness,
    "burst": burst,
    "idle": idle,
    "memory": memory,
    "scale": scale,
    # the same with the HTTP server on and /metrics scraped (params "http": true)
    "lateness+http": lateness,
    "burst+http": burst,
}

if __name__ == "__main__":
    child_main(SCENARIOS)
