"""One rule for secrets: what counts as one, and that argv never carries it.

The argv half lives in cronloop.cli.main.split_argv; it is tested here because the rule it
applies (cronloop.config.values.holds_secret) is the same one masking and the params-file
permission check use.
"""

from __future__ import annotations

import pytest

from cronloop.cli.main import run_cli, split_argv
from cronloop.config.settings import ConfigError
from cronloop.config.values import holds_secret, url_has_password

PASSWORD = "s3cr3t-Pw"


@pytest.mark.parametrize(
    "token",
    [
        f"--database_password={PASSWORD}",
        f"--DATABASE_PASSWORD={PASSWORD}",
        f"--Database-Password={PASSWORD}",
        f"--database_url=mysql://u:{PASSWORD}@h/db",
        f"--DATABASE_URL=mysql://u@h/db?password={PASSWORD}",
        f"--database_url=mysql://u@h/db?PassWd={PASSWORD}",
        f"--email.smtp_password={PASSWORD}",
        f"--EMAIL.SMTP_PASSWORD={PASSWORD}",
        f"--email.api_token={PASSWORD}",
        f"--email.relay=smtp://u:{PASSWORD}@h",
    ],
)
def test_a_password_on_the_command_line_is_refused_in_any_spelling(token: str) -> None:
    with pytest.raises(ConfigError, match="do not put a password on the command line") as info:
        split_argv(["check-config", token])
    assert PASSWORD not in str(info.value)


@pytest.mark.parametrize("flag", ["--database-password", "--DATABASE_PASSWORD"])
def test_a_password_as_the_next_argument_is_refused_not_echoed(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(["check-config", flag, PASSWORD]) == 78
    err = capsys.readouterr().err
    assert "do not put a password on the command line" in err and PASSWORD not in err


def test_ordinary_flags_pass_in_any_case() -> None:
    rest, param_file, overrides = split_argv(
        ["run", "--Poll-Interval=5", "--database_url=mysql://u@h/db", "--PARAM_FILE=/x"]
    )
    assert rest == ["run"] and param_file == "/x"
    assert overrides == {"poll_interval": "5", "database_url": "mysql://u@h/db"}


@pytest.mark.parametrize(
    ("key", "value", "secret"),
    [
        ("database_password", "x", True),
        ("database_password", "", False),
        ("database_password_file", "/run/pw", False),
        ("database_url", "mysql://u@h/db", False),
        ("database_url", "mysql://u:pw@h/db", True),
        ("database_url", "mysql://u@h/db?password=pw", True),
        ("database_url", "mysql://u@h/db?password=", False),
        ("email.smtp_password", "x", True),
        ("email.relay", "smtp://u:pw@h:25", True),
        ("email.subject", "password reset", False),
        ("backup.time", "23:30", False),
    ],
)
def test_holds_secret(key: str, value: str, secret: bool) -> None:
    assert holds_secret(key, value) is secret


def test_url_has_password_reads_userinfo_and_query() -> None:
    assert url_has_password("mysql://u:p%40ss@h/db")
    assert url_has_password("mysql://u@h/db?ssl=1&password=x")
    assert not url_has_password("mysql://u@h/db?ssl=1")
    assert not url_has_password("not a url")
