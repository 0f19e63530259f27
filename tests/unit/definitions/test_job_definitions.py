"""@job definitions, their discovery beside @task, per-kind settings from the params
file, and the retry rule."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from cronloop.config.settings import ConfigError, Settings, load_settings
from cronloop.definitions.discovery import discover_jobs
from cronloop.definitions.jobs import job
from cronloop.definitions.registry import TaskDefinitionError, build_registry, discover
from cronloop.domain.jobs import RetryRule

MODULE = """
from cronloop import job, task

@job(max_retries=2, retry_delay_s=5, concurrency=3, timeout=30)
async def webhook(ctx, url):
    return url

@job(name="rebuild-report", blocking=True)
def rebuild(ctx, report_id):
    return report_id

@task(every=60)
async def tick(ctx):
    pass
"""


def _module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, body: str) -> str:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)
    return name


def _settings(tmp_path: Path, text: str = "") -> Settings:
    path = tmp_path / "test.params"
    path.write_text(text)
    path.chmod(0o600)
    return load_settings(param_file=str(path), env={})


def _registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, params: str = "") -> Any:
    name = _module(tmp_path, monkeypatch, "jobmod", MODULE)
    settings = _settings(tmp_path, params)
    tasks = discover([name], use_entry_points=False)
    return build_registry(settings, tasks, discover_jobs([name], use_entry_points=False))


def test_jobs_are_discovered_beside_tasks_with_their_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = _registry(tmp_path, monkeypatch)
    assert registry.names() == ["tick"]
    assert sorted(registry.jobs) == ["rebuild-report", "webhook"]
    hook = registry.jobs["webhook"]
    assert (hook.timeout_s, hook.concurrency, hook.retry) == (30.0, 3, RetryRule(2, 5.0, True))
    rebuild = registry.jobs["rebuild-report"]
    assert rebuild.blocking and rebuild.concurrency is None
    assert rebuild.timeout_s == Settings().task_timeout


def test_the_params_file_sets_a_kinds_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = (
        "webhook.max_retries = 5\nwebhook.retry_delay_s = 2m\n"
        "webhook.exponential_delay = 0\nwebhook.concurrency = 1\nwebhook.timeout = 10\n"
    )
    hook = _registry(tmp_path, monkeypatch, params).jobs["webhook"]
    assert hook.retry == RetryRule(5, 120.0, False)
    assert (hook.concurrency, hook.timeout_s) == (1, 10.0)


def test_a_bad_or_unknown_job_setting_names_file_line_and_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match=r"test.params:1: webhook.max_retries = '-1'"):
        _registry(tmp_path, monkeypatch, "webhook.max_retries = -1\n")
    with pytest.raises(ConfigError, match=r"test.params:1: unknown setting webhook.every"):
        _registry(tmp_path, monkeypatch, "webhook.every = 5\n")
    with pytest.raises(ConfigError, match=r"test.params:1.*no task named 'webhok'"):
        _registry(tmp_path, monkeypatch, "webhok.max_retries = 1\n")


def test_malformed_definitions_are_refused_naming_the_job() -> None:
    with pytest.raises(TaskDefinitionError, match=r"job 'plain'.*not `async def`"):

        @job()
        def plain(ctx: object) -> None: ...

    with pytest.raises(TaskDefinitionError, match=r"job 'neg'.*max_retries"):

        @job(max_retries=-1)
        async def neg(ctx: object) -> None: ...

    with pytest.raises(TaskDefinitionError, match=r"job 'zero'.*concurrency"):

        @job(concurrency=0)
        async def zero(ctx: object) -> None: ...


def test_a_job_and_a_task_may_not_share_a_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = "from cronloop import job, task\n@job(name='x')\nasync def a(ctx): pass\n"
    body += "@task(every=5, name='x')\nasync def b(ctx): pass\n"
    name = _module(tmp_path, monkeypatch, "clash", body)
    settings = _settings(tmp_path)
    with pytest.raises(ConfigError, match="'x' is both a task"):
        build_registry(
            settings,
            discover([name], use_entry_points=False),
            discover_jobs([name], use_entry_points=False),
        )


def test_the_retry_rule_backs_off_then_gives_up() -> None:
    rule = RetryRule(max_retries=3, retry_delay_s=10.0, exponential_delay=True)
    assert [rule.delay_after(n) for n in (1, 2, 3, 4)] == [10.0, 20.0, 40.0, None]
    assert RetryRule(2, 7.0, False).delay_after(2) == 7.0
    assert rule.delay_after(1, job_max_retries=0) is None  # the job's own limit wins
