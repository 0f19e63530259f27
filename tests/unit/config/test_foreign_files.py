"""A params file nobody named (issue 10 item 5): ``./cronloop.params`` in whatever
directory a command runs in, or the system one, is read only when the invoking user or
root owns it and nobody else may write it. Checked on the opened file (fstat).

The tests run as root in CI: another user's file is made with chown to nobody. As a
normal user, chown is not allowed, and those cases are skipped.
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest

import cronloop.config.settings as settings_module
from cronloop.config.params import ParamsError, read_params_file
from cronloop.config.settings import ConfigError, load_settings

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        settings_module,
        "DEFAULT_PARAM_FILES",
        ("cronloop.params", str(tmp_path / "etc" / "cronloop.params")),
    )


def nobody() -> int:
    return pwd.getpwnam("nobody").pw_uid


def write(path: Path, mode: int = 0o644, uid: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("task_modules = their_module\npoll_interval = 3\n", encoding="utf-8")
    path.chmod(mode)
    if uid is not None:
        os.chown(path, uid, -1)
    return path


def refusal(**kw: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(env={}, **kw)  # type: ignore[arg-type]
    return str(info.value)


@as_root
@pytest.mark.parametrize("where", ["cronloop.params", "etc/cronloop.params"])
def test_an_implicit_params_file_of_another_user_is_refused(tmp_path: Path, where: str) -> None:
    path = write(tmp_path / where, uid=nobody())
    text = refusal()
    assert str(path) in text and "owned by nobody" in text and "implicitly" in text
    assert "--param-file" in text and "their_module" not in text


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666])
def test_an_implicit_params_file_others_may_write_is_refused(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path / "cronloop.params", mode=mode)
    text = refusal()
    assert str(path) in text and f"mode {mode:04o}" in text


def test_an_own_implicit_file_is_read(tmp_path: Path) -> None:
    write(tmp_path / "cronloop.params", mode=0o644)
    assert load_settings(env={}).poll_interval == 3.0


@as_root
def test_a_named_file_is_the_operators_choice(tmp_path: Path) -> None:
    path = write(tmp_path / "cronloop.params", uid=nobody())
    assert load_settings(param_file=str(path), env={}).poll_interval == 3.0
    env = {"CRONLOOP_PARAM_FILE": str(path)}
    assert load_settings(env=env).poll_interval == 3.0


def test_the_check_sees_the_file_that_is_read(tmp_path: Path) -> None:
    """The check gets the fstat of the opened file: the one whose bytes are read next."""
    path = write(tmp_path / "cronloop.params")
    seen: list[os.stat_result] = []

    def check(info: os.stat_result) -> str:
        seen.append(info)
        return "refused for the test" if stat.S_IMODE(info.st_mode) == 0o644 else ""

    with pytest.raises(ParamsError, match="refused for the test"):
        read_params_file(path, check=check)
    assert seen[0].st_ino == path.stat().st_ino
    path.chmod(0o600)
    assert [v.key for v in read_params_file(path, check=check)] == ["task_modules", "poll_interval"]


def test_the_mode_is_judged_on_the_file_that_was_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A named file others may write is refused even if, by the time its mode is looked
    at, its name points at a safe file (a rename race): the fstat of the read is used."""
    path = write(tmp_path / "named.params", mode=0o646)
    safe = write(tmp_path / "safe.params", mode=0o600)
    real_stat = os.stat

    def renamed_meanwhile(target: object, *args: object, **kwargs: object) -> os.stat_result:
        return real_stat(safe if str(target) == str(path) else target, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", renamed_meanwhile)
    text = refusal(param_file=str(path))
    assert "writable by others (mode 0646)" in text


def test_a_password_file_is_judged_on_the_file_that_was_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "pw"
    secret.write_text("Zq7Xv9Kp2Lm4\n")
    secret.chmod(0o644)
    safe = write(tmp_path / "safe", mode=0o600)
    real_stat = os.stat

    def renamed_meanwhile(target: object, *args: object, **kwargs: object) -> os.stat_result:
        return real_stat(safe if str(target) == str(secret) else target, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", renamed_meanwhile)
    text = refusal(overrides={"database_password_file": str(secret)})
    assert "holds the database password" in text and "0644" in text
    assert "Zq7Xv9Kp2Lm4" not in text
