"""`http_token` is a secret: never on the command line, masked when shown, from a
credential or a params file that others cannot read."""

from __future__ import annotations

from pathlib import Path

import pytest

from cronloop.cli.main import split_argv
from cronloop.config.settings import ConfigError, describe_sources, load_settings

TOKEN = "Tok3n-for-the-web"


@pytest.mark.parametrize(
    "argv", [[f"--http_token={TOKEN}"], [f"--HTTP-TOKEN={TOKEN}"], ["--http-token", TOKEN]]
)
def test_the_token_on_the_command_line_is_refused(argv: list[str]) -> None:
    with pytest.raises(ConfigError, match="do not put a password on the command line") as info:
        split_argv(["run", *argv])
    assert TOKEN not in str(info.value)


def test_the_credential_wins_over_the_params_file(tmp_path: Path) -> None:
    params = tmp_path / "cronloop.params"
    params.write_text("http_token = from-the-file\n")
    params.chmod(0o600)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "http_token").write_text(TOKEN + "\n")
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    settings = load_settings(param_file=str(params), env=env)
    assert settings.http_token is not None and settings.http_token.reveal() == TOKEN
    assert settings.sources["http_token"] == "credentials directory"
    shown = {key: value for key, value, _ in describe_sources(settings)}
    assert shown["http_token"] == "********"
    assert TOKEN not in repr(settings)


def test_a_params_file_holding_the_token_must_not_be_readable_by_others(tmp_path: Path) -> None:
    params = tmp_path / "cronloop.params"
    params.write_text(f"http_token = {TOKEN}\n")
    params.chmod(0o644)
    with pytest.raises(ConfigError, match="holds a secret \\(http_token") as info:
        load_settings(param_file=str(params), env={})
    assert TOKEN not in str(info.value)
