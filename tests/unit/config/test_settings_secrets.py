"""The settings model's secrets: the password's sources and precedence, that it never
leaks in any view, and the params file's permissions when it holds one."""

from __future__ import annotations

from pathlib import Path

import pytest

from cronloop.config.settings import (
    SETTING_KEYS,
    Secret,
    Settings,
    describe_sources,
)
from cronloop.config.values import mask_url
from tests.unit.config.settings_support import (
    PASSWORD,
    isolated,  # noqa: F401  (a fixture)
    load,
    params,
    problems_of,
)

# ---------------------------------------------------------------- passwords


def test_secret_hides_its_value() -> None:
    secret = Secret(PASSWORD)
    assert repr(secret) == "'********'"
    assert str(secret) == "'********'"
    assert f"{secret}" == "'********'"
    assert secret.reveal() == PASSWORD
    assert secret == Secret(PASSWORD)
    assert secret != Secret("other")
    assert hash(secret) == hash(Secret(PASSWORD))


@pytest.fixture
def all_password_sources(tmp_path: Path) -> dict[str, object]:
    """Every source of the password at once, each with a different value."""
    pw_file = params(tmp_path / "pw", "from-password-file\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "database_password").write_text("from-credentials\n")
    f = params(
        tmp_path / "a.params",
        f"database_password = from-params\ndatabase_password_file = {pw_file}\n",
    )
    env = {"CRONLOOP_DATABASE_PASSWORD": "from-env", "CREDENTIALS_DIRECTORY": str(creds)}
    return {"file": f, "env": env, "creds": creds, "pw_file": pw_file}


def test_password_precedence(all_password_sources: dict[str, object]) -> None:
    f = all_password_sources["file"]
    assert isinstance(f, Path)
    env = dict(all_password_sources["env"])  # type: ignore[call-overload]
    creds = all_password_sources["creds"]
    assert isinstance(creds, Path)
    pw_file = all_password_sources["pw_file"]

    def check(overrides: dict[str, str], expected: str, source: str) -> None:
        s = load(f, overrides, env)
        assert s.database_password is not None
        assert s.database_password.reveal() == expected
        assert s.sources["database_password"] == source

    check({"database_password": "from-flag"}, "from-flag", "command line")
    check({}, "from-env", "env CRONLOOP_DATABASE_PASSWORD")
    del env["CRONLOOP_DATABASE_PASSWORD"]
    check({}, "from-credentials", "credentials directory")
    (creds / "database_password").unlink()  # credentials directory without the password
    check({}, "from-password-file", f"database_password_file {pw_file}")
    del env["CREDENTIALS_DIRECTORY"]
    check({"database_password_file": ""}, "from-params", f"file {f}:1")


def test_password_from_env_keeps_spaces() -> None:
    s = load(env={"CRONLOOP_DATABASE_PASSWORD": " a b "})
    assert s.database_password == Secret(" a b ")


def test_empty_password_means_none(tmp_path: Path) -> None:
    f = params(tmp_path / "a.params", "database_password = secret\n")
    s = load(f, overrides={"database_password": ""})
    assert s.database_password is None
    assert s.sources["database_password"] == "command line"


def test_password_file_strips_one_trailing_newline_only(tmp_path: Path) -> None:
    pw = params(tmp_path / "pw", " pass word \n\n")
    s = load(overrides={"database_password_file": str(pw)})
    assert s.database_password == Secret(" pass word \n")
    params(pw, "pw\r\n")
    assert load(overrides={"database_password_file": str(pw)}).database_password == Secret("pw")


@pytest.mark.parametrize(
    ("content", "mode", "expected"),
    [(None, 0o600, "no such file"), ("", 0o600, "empty"), ("x\n", 0o644, "chmod 600")],
)
def test_bad_password_file_is_an_error_naming_key_and_path(
    tmp_path: Path, content: str | None, mode: int, expected: str
) -> None:
    pw = tmp_path / "pw"
    if content is not None:
        params(pw, content, mode)
    (problem,) = problems_of(env={"CRONLOOP_DATABASE_PASSWORD_FILE": str(pw)})
    assert problem.startswith("env CRONLOOP_DATABASE_PASSWORD_FILE: database_password_file")
    assert str(pw) in problem
    assert expected in problem


def test_password_file_is_checked_even_when_a_higher_source_wins(tmp_path: Path) -> None:
    (problem,) = problems_of(
        overrides={"database_password": "x", "database_password_file": str(tmp_path / "no")}
    )
    assert "no such file" in problem


def test_credentials_directory_without_password_file_is_fine(tmp_path: Path) -> None:
    s = load(env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert s.database_password is None


def test_unreadable_credential_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "database_password").mkdir()
    (problem,) = problems_of(env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert problem.startswith("credentials directory: ")
    assert "is a directory" in problem


def test_password_never_leaks(tmp_path: Path) -> None:
    url = f"mysql+aiomysql://cronloop:{PASSWORD}@db.example/itop"
    f = params(tmp_path / "a.params", f"database_password = {PASSWORD}\ndatabase_url = {url}\n")
    s = load(f)
    assert s.database_password == Secret(PASSWORD)
    for text in (repr(s), str(s), repr(s.masked()), repr(describe_sources(s))):
        assert PASSWORD not in text
    assert s.masked()["database_password"] == "********"
    assert s.masked()["database_url"] == "mysql+aiomysql://cronloop:********@db.example/itop"
    assert s.database_url == url  # the real URL is still there for the connector

    # errors elsewhere in the same configuration do not reveal it either
    bad = params(tmp_path / "b.params", f"database_password = {PASSWORD}\npoll_interval = x\n")
    problems = problems_of(bad, env={"CRONLOOP_DATABASE_PASSWORD": PASSWORD})
    assert PASSWORD not in "\n".join(problems)


def test_bad_database_url_error_masks_its_password() -> None:
    url = f"mysql://u:{PASSWORD}@host:notaport/db"
    (problem,) = problems_of(overrides={"database_url": url})
    assert "not a database URL" in problem
    assert PASSWORD not in problem
    assert "mysql://u:********@host:notaport/db" in problem


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("mysql+aiomysql://u:s3cret@h/db", "mysql+aiomysql://u:********@h/db"),
        ("mysql+aiomysql://u:p%40ss@h:3306/db", "mysql+aiomysql://u:********@h:3306/db"),
        ("mysql+aiomysql://cronloop@db.example/itop", "mysql+aiomysql://cronloop@db.example/itop"),
        ("sqlite+aiosqlite:////var/lib/x.db", "sqlite+aiosqlite:////var/lib/x.db"),
        ("mysql://u:s3cret@h:bad/db", "mysql://u:********@h:bad/db"),
        (
            "mysql://u@h/db?password=s3cret&charset=utf8",
            "mysql://u@h/db?password=********&charset=utf8",
        ),
        (
            "mysql://u@h/db?charset=utf8&PASSWD=s3cret",
            "mysql://u@h/db?charset=utf8&PASSWD=********",
        ),
        ("smtp://h?api_token=s3cret", "smtp://h?api_token=********"),
        ("mysql://u@h/db?password=", "mysql://u@h/db?password="),
        ("mysql://u@h/db?charset=utf8", "mysql://u@h/db?charset=utf8"),
        ("23:30", "23:30"),
        ("", ""),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_masked_formats_every_setting() -> None:
    s = Settings(task_modules=("a", "b.c"), verbose=True, lifetime_jitter_s=1.5)
    shown = s.masked()
    assert set(shown) == set(SETTING_KEYS)
    assert (shown["task_modules"], shown["verbose"], shown["lifetime_jitter_s"]) == (
        "a,b.c",
        "true",
        "1.5",
    )
    assert (shown["max_lifetime"], shown["database_password"]) == ("600", "")


# ---------------------------------------------------------------- file permissions


@pytest.mark.parametrize(
    ("text", "mode", "refused"),
    [
        (f"database_password = {PASSWORD}\n", 0o644, True),
        (f"database_password = {PASSWORD}\n", 0o604, True),
        (f"database_password = {PASSWORD}\n", 0o660, True),
        (f"database_password = {PASSWORD}\n", 0o600, False),
        (f"database_password = {PASSWORD}\n", 0o640, False),
        (f"database_url = mysql://u:{PASSWORD}@h/db\n", 0o644, True),
        ("database_url = mysql://u@h/db\n", 0o644, False),
        (f"database_url = mysql://u@h/db?password={PASSWORD}\n", 0o644, True),
        (f"DATABASE_URL = mysql://u@h/db?passwd={PASSWORD}\n", 0o644, True),
        (f"email.relay = smtp://u:{PASSWORD}@h\n", 0o644, True),
        (f"Email.Smtp_Password = {PASSWORD}\n", 0o644, True),
        (f"email.smtp_password = {PASSWORD}\n", 0o644, True),
        ("database_password =\n", 0o644, False),
        ("poll_interval = 3\n", 0o664, False),
        ("poll_interval = 3\n", 0o646, True),
    ],
)
def test_params_file_permissions(tmp_path: Path, text: str, mode: int, refused: bool) -> None:
    f = params(tmp_path / "a.params", text, mode)
    if not refused:
        load(f)
        return
    (problem,) = problems_of(f)
    assert problem.startswith(f"params file {f}: ")
    assert "chmod" in problem
    assert f"{mode:04o}" in problem
    assert PASSWORD not in problem


def test_a_url_password_is_masked_in_every_view(tmp_path: Path) -> None:
    url = f"mysql+aiomysql://u@h/db?password={PASSWORD}"
    f = params(
        tmp_path / "a.params", f"database_url = {url}\nemail.relay = smtp://u:{PASSWORD}@h\n"
    )
    s = load(f)
    assert s.database_url == url
    rows = {key: value for key, value, _ in describe_sources(s)}
    assert rows["database_url"].endswith("?password=********")
    assert rows["email.relay"] == "smtp://u:********@h"
    assert PASSWORD not in repr(s) and PASSWORD not in str(s.masked())
    (problem,) = problems_of(overrides={"database_url": f"mysql://h:bad:port/db?pwd={PASSWORD}"})
    assert PASSWORD not in problem


def test_refused_file_names_the_secret_key_and_line(tmp_path: Path) -> None:
    f = params(tmp_path / "a.params", f"x.y = 1\ndatabase_password = {PASSWORD}\n", 0o644)
    (problem,) = problems_of(f)
    assert "holds a secret (database_password, line 2)" in problem
    assert f"chmod 600 {f}" in problem
    assert f"chmod 640 {f}" in problem
