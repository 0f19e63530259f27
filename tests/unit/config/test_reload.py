"""SIGHUP reloads: what applies live, what needs a restart, invalid files rejected."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from cronloop.config.reload import reload_settings
from cronloop.config.settings import Settings, load_settings
from cronloop.definitions.registry import TaskDefinition, discover

TASKS = "from cronloop import task\n\n@task(every=60)\nasync def tick(ctx):\n    return None\n"


@pytest.fixture
def definitions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[TaskDefinition]:
    (tmp_path / "reload_tasks.py").write_text(TASKS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return discover(["reload_tasks"], use_entry_points=False)


def _loader(path: Path) -> object:
    return lambda: load_settings(param_file=str(path), env={})


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_live_changes_apply_and_restart_ones_are_named_and_kept(
    tmp_path: Path, definitions: list[TaskDefinition]
) -> None:
    params = _write(tmp_path / "c.params", "poll_interval = 2\nlease_s = 30\n")
    current = load_settings(param_file=str(params), env={})
    _write(params, "poll_interval = 0.5\nlease_s = 10\ntick.every = 5\nmax_concurrency = 3\n")
    result = reload_settings(current, _loader(params), definitions)  # type: ignore[arg-type]
    assert result is not None
    assert sorted(result.live) == ["max_concurrency", "poll_interval", "task options"]
    assert result.restart == ["lease_s"]
    assert result.settings.poll_interval == 0.5 and result.settings.max_concurrency == 3
    assert result.settings.lease_s == 30  # the running value: only a restart changes it
    assert result.registry["tick"].schedule_text == "every 5s"


def test_an_invalid_file_is_rejected_with_a_clear_line(
    tmp_path: Path, definitions: list[TaskDefinition]
) -> None:
    params = _write(tmp_path / "c.params", "poll_interval = 2\n")
    current = load_settings(param_file=str(params), env={})
    for bad in ("poll_interval = soon\n", "tick.colour = red\n", "no_such_key = 1\n"):
        _write(params, bad)
        with capture_logs() as logs:
            assert reload_settings(current, _loader(params), definitions) is None  # type: ignore[arg-type]
        [entry] = [e for e in logs if e["log_level"] == "error"]
        assert "rejected" in entry["event"] and "c.params:1" in str(entry["problems"])


def test_no_change_is_no_change(tmp_path: Path, definitions: list[TaskDefinition]) -> None:
    params = _write(tmp_path / "c.params", "poll_interval = 2\n")
    current = load_settings(param_file=str(params), env={})
    result = reload_settings(current, _loader(params), definitions)  # type: ignore[arg-type]
    assert result is not None and result.live == [] and result.restart == []
    assert isinstance(result.settings, Settings)
