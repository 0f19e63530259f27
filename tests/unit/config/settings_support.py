"""What the settings tests share: an isolated working directory (never the host's
/etc/cronloop/cronloop.params), a params file writer, and the loader with an empty
environment unless a test gives one."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from cronloop.config import settings as settings_module
from cronloop.config.settings import (
    ConfigError,
    Settings,
    load_settings,
)

PASSWORD = "Tr0ub4dor&3-unique"  # distinctive, so a leak is easy to find
EXAMPLE = Path(__file__).resolve().parents[3] / "systemd" / "cronloop.params.example"

EXPECTED_DEFAULTS: dict[str, object] = {
    "database_url": "",
    "database_hosts": (),
    "database_password": None,
    "database_password_file": "",
    "max_lifetime": 600.0,
    "lifetime_jitter_s": 5.0,
    "poll_interval": 2.0,
    "max_concurrency": 10,
    "task_timeout": 300.0,
    "grace_s": 5.0,
    "shutdown_grace": 10.0,
    "lease_s": 30.0,
    "max_clock_skew_s": 1.0,
    "timezone": "",
    "verbose": False,
    "log_level": "info",
    "log_format": "auto",
    "task_modules": (),
    "job_retention_days": 7,
    "auto_migrate": False,
    "allow_root": False,
    "startup_db_wait_s": 60.0,
    "retry_max": 3,
    "retry_delay_s": 30.0,
    "quarantine_strikes": 2,
    "quarantine_timeouts": 5,
    "watchdog_s": 30.0,
    "db_pool_size": 20,
    "http_listen": "",
    "http_token": None,
    "http_allow_insecure": False,
}


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in tmp_path, and never read the host's /etc/cronloop/cronloop.params."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        settings_module,
        "DEFAULT_PARAM_FILES",
        ("cronloop.params", str(tmp_path / "etc" / "cronloop.params")),
    )


def params(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def load(
    param_file: str | Path | None = None,
    overrides: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """load_settings with an empty environment unless one is given."""
    return load_settings(
        param_file=None if param_file is None else str(param_file),
        overrides=overrides,
        env={} if env is None else env,
    )


def problems_of(
    param_file: str | Path | None = None,
    overrides: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as info:
        load(param_file, overrides, env)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems
