"""SIGHUP reloads: what applies live, what needs a restart, invalid files rejected."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from cronloop.config.reload import reload_settings, report
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


def test_every_setting_is_either_live_or_needs_a_restart() -> None:
    """A new setting must be sorted into one list: the log never claims it applied."""
    from dataclasses import fields

    from cronloop.config.reload import _NOT_SETTINGS, LIVE, NEEDS_RESTART

    names = {f.name for f in fields(Settings)} - _NOT_SETTINGS
    assert not LIVE & NEEDS_RESTART
    assert names == LIVE | NEEDS_RESTART, names ^ (LIVE | NEEDS_RESTART)


def test_settings_frozen_at_start_are_named_as_needing_a_restart(
    tmp_path: Path, definitions: list[TaskDefinition]
) -> None:
    params = _write(tmp_path / "c.params", "poll_interval = 2\n")
    current = load_settings(param_file=str(params), env={})
    frozen = {
        "quarantine_timeouts": "9",
        "quarantine_strikes": "7",
        "db_pool_size": "3",
        "max_lifetime": "77",
    }
    live = {"retry_max": "5", "retry_delay_s": "12", "max_concurrency": "4"}
    _write(params, "".join(f"{k} = {v}\n" for k, v in {**frozen, **live}.items()))
    with capture_logs() as logs:
        result = reload_settings(current, _loader(params), definitions)  # type: ignore[arg-type]
        assert result is not None
        report(result, ["tick"])
    assert sorted(result.restart) == sorted(frozen)
    assert sorted(result.live) == sorted(live)
    for key in frozen:  # the running value stays, so nothing reports the new one as in force
        assert getattr(result.settings, key) == getattr(current, key)
    assert result.settings.retry_max == 5 and result.settings.retry_delay_s == 12
    [applied] = [e for e in logs if e["event"] == "configuration reloaded"]
    assert sorted(applied["applied"]) == sorted(live)
    assert sorted(applied["needs_restart"]) == sorted(frozen)
