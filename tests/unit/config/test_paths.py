"""The state directory rule (config/paths.py): $STATE_DIRECTORY, else the system one when
the system params file is in force or the directory exists, else ./var."""

from __future__ import annotations

from pathlib import Path

import pytest

from cronloop.config.paths import (
    SYSTEM_ROOT_ENV,
    state_directory,
    system_params_file,
    system_state_directory,
)


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake host root (nothing under it yet), and the working directory elsewhere."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return tmp_path / "root"


def env_of(root: Path, **extra: str) -> dict[str, str]:
    return {SYSTEM_ROOT_ENV: str(root), **extra}


def test_system_paths_default_to_the_real_ones() -> None:
    assert system_params_file({}) == Path("/etc/cronloop/cronloop.params")
    assert system_state_directory({}) == Path("/var/lib/cronloop")


def test_system_paths_move_under_the_test_root(root: Path) -> None:
    assert system_params_file(env_of(root)) == root / "etc/cronloop/cronloop.params"
    assert system_state_directory(env_of(root)) == root / "var/lib/cronloop"


def test_a_checkout_run_by_hand_uses_dot_var(root: Path) -> None:
    assert state_directory(env_of(root)) == Path.cwd() / "var"
    assert state_directory(env_of(root, STATE_DIRECTORY="")) == Path.cwd() / "var"
    other = root / "elsewhere.params"
    assert state_directory(env_of(root), param_files=[str(other)]) == Path.cwd() / "var"


def test_state_directory_wins_first_of_a_colon_list(root: Path) -> None:
    (root / "var/lib/cronloop").mkdir(parents=True)
    env = env_of(root, STATE_DIRECTORY="/srv/a:/srv/b")
    assert state_directory(env, param_files=[str(system_params_file(env))]) == Path("/srv/a")


def test_the_system_params_file_in_force_means_the_system_directory(root: Path) -> None:
    env = env_of(root)
    params = system_params_file(env)
    assert state_directory(env, param_files=[str(params)]) == root / "var/lib/cronloop"
    # the same file named through a symlink is still the system one
    link = root / "link.params"
    params.parent.mkdir(parents=True)
    params.write_text("")
    link.symlink_to(params)
    assert state_directory(env, param_files=[str(link)]) == root / "var/lib/cronloop"


def test_an_existing_system_directory_is_used_from_anywhere(root: Path) -> None:
    (root / "var/lib/cronloop").mkdir(parents=True)
    assert state_directory(env_of(root)) == root / "var/lib/cronloop"
    (root / "var/lib/cronloop").rmdir()
    (root / "var/lib/cronloop").write_text("not a directory")
    assert state_directory(env_of(root)) == Path.cwd() / "var"
