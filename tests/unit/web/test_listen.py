"""`http_listen`: the forms accepted, the errors for the others, and what counts as loopback."""

from __future__ import annotations

import pytest

from cronloop.config.listen import Listen, parse_listen
from cronloop.config.settings import ConfigError, Settings, load_settings
from cronloop.web.server import check_listen


@pytest.mark.parametrize(
    ("text", "listen", "loopback"),
    [
        ("127.0.0.1:9187", Listen("127.0.0.1", 9187), True),
        ("[::1]:9187", Listen("::1", 9187), True),
        ("localhost:80", Listen("localhost", 80), True),
        ("0.0.0.0:9187", Listen("0.0.0.0", 9187), False),
        ("[2001:db8::1]:9187", Listen("2001:db8::1", 9187), False),
        ("unix:/run/cronloop/http.sock", Listen(path="/run/cronloop/http.sock"), True),
    ],
)
def test_the_accepted_forms(text: str, listen: Listen, loopback: bool) -> None:
    assert Listen.parse(text) == listen
    assert listen.loopback is loopback
    assert str(listen) == text


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("9187", "expected host:port"),
        ("127.0.0.1:0", "from 1 to 65535"),
        ("127.0.0.1:http", "from 1 to 65535"),
        ("::1:9187", "in brackets"),
        ("[::1:9187", "in brackets"),
        ("[nonsense]:9187", "not an IPv6 address"),
        ("unix:run/http.sock", "absolute path"),
    ],
)
def test_a_bad_value_says_what_is_expected(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_listen(text)


def test_a_bad_value_is_a_configuration_error_naming_the_key() -> None:
    env = {"CRONLOOP_PARAM_FILE": "", "CRONLOOP_HTTP_LISTEN": "localhost"}
    with pytest.raises(ConfigError, match="env CRONLOOP_HTTP_LISTEN: http_listen = 'localhost'"):
        load_settings(env=env)


def test_off_by_default() -> None:
    assert load_settings(env={"CRONLOOP_PARAM_FILE": ""}).http_listen == ""


def test_a_non_loopback_listener_needs_the_explicit_opt_in() -> None:
    with pytest.raises(ConfigError, match="http_allow_insecure = 1"):
        check_listen(Settings(http_listen="0.0.0.0:9187"))
    assert check_listen(Settings(http_listen="0.0.0.0:9187", http_allow_insecure=True)).port == 9187
    assert check_listen(Settings(http_listen="unix:/tmp/x.sock")).is_unix
