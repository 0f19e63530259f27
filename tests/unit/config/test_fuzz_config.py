"""Fuzzing (issue 10): the params parser, the settings loader and URL masking, with
hypothesis. Bounded and derandomised like ``tests/tasks/test_fuzz.py`` (the same
CRONLOOP_FUZZ_EXAMPLES knob searches longer); what a search finds is kept below as a
named regression test.

- Parser: any text gives values with well-formed keys and problems that are
  ``ParamsError``s with a line in range, and no problem ever quotes a line's text.
- Loader: any params file and flags give ``Settings`` or a ``ConfigError``, never another
  exception, and no error ever shows a password put there (a bad value of a setting that
  is not a secret, ``poll_interval = soon``, is shown: that is how it is found).
- ``mask_url``: whatever the password (``@``, ``:``, ``/``, ``%``, quoting or not) and
  wherever it sits (userinfo, ``?password=``, ``?passwd=``), no character of it is shown.
"""

from __future__ import annotations

import os
import string
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cronloop.config.params import ParamsError, is_valid_key, parse_params_text
from cronloop.config.settings import ConfigError, Settings, load_settings
from cronloop.config.values import MASK, mask_url

EXAMPLES = int(os.environ.get("CRONLOOP_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=EXAMPLES or 200,
    deadline=2000,
    derandomize=not EXAMPLES,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# A password alphabet disjoint from the rest of the URLs below (lower-case letters only):
# any upper-case letter or digit in the output is a piece of the password.
PW_VISIBLE = string.ascii_uppercase + string.digits
PASSWORD = st.text(PW_VISIBLE + "@:/?#&=%+ !$;,'\"[]", min_size=1, max_size=24).filter(
    lambda pw: any(c in PW_VISIBLE for c in pw)
)
WORD = st.text(string.ascii_lowercase, min_size=1, max_size=8)
SCHEME = st.sampled_from(["mysql", "mysql+aiomysql", "mariadb+pymysql", "sqlite+aiosqlite"])


QUERY_NAMES = ["password", "passwd", "PASSWORD", "Db_Password", "pwd"]


def _shows_password_chars(text: str) -> bool:
    for name in QUERY_NAMES:  # the parameter's name is not the password
        text = text.replace(f"{name}=", "=")
    return any(c in PW_VISIBLE for c in text)


@st.composite
def urls_with_password(draw: st.DrawFn) -> str:
    pw = draw(PASSWORD)
    encoded = draw(st.sampled_from([pw, quote(pw, safe=""), quote(pw)]))
    user, host, db, other = draw(WORD), draw(WORD), draw(WORD), draw(WORD)
    scheme = draw(SCHEME)
    name = draw(st.sampled_from(QUERY_NAMES))
    where = draw(st.sampled_from(["userinfo", "query", "query-second"]))
    if where == "userinfo":
        return f"{scheme}://{user}:{encoded}@{host}/{db}"
    # in a query, a bare '&' or '#' ends the value by URL rules: a password there is encoded
    encoded = quote(pw, safe="")
    if where == "query":
        return f"{scheme}://{user}@{host}/{db}?{name}={encoded}"
    return f"{scheme}://{host}/{db}?charset={other}&{name}={encoded}"


@FUZZ
@given(urls_with_password())
@example("mysql://u:P@SS@h/d")  # an unencoded '@' in the password (issue 10 item 4)
@example("mysql://u:P:S/S@h/d")
@example("mysql://u@h/d?password=P%26Q&x=y")
@example("mysql://u:P%S@h:x/d")  # an unparseable URL
def test_mask_url_shows_no_character_of_the_password(url: str) -> None:
    masked = mask_url(url)
    assert not _shows_password_chars(masked), (url, masked)
    assert MASK in masked


# -- the params parser -------------------------------------------------------------------------

SECRET = "Zq7Xv9Kp2Lm4"  # in no message, whatever line it is on
LINE_PARTS = st.sampled_from(
    ["key", "backup.time", "=", " = ", "#", "'", '"', SECRET, "a.", ".b", "-", " ", "é", "\t", "\r"]
)
LINE = st.lists(LINE_PARTS, max_size=8).map("".join) | st.text(max_size=30)
PARAMS_TEXT = st.lists(LINE, max_size=12).map("\n".join)


@FUZZ
@given(PARAMS_TEXT)
def test_the_parser_never_quotes_a_line_and_keeps_only_valid_keys(text: str) -> None:
    values, problems = parse_params_text(text, "f.params")
    lines = text.split("\n")
    for value in values:
        assert is_valid_key(value.key) and 1 <= value.line <= len(lines)
    for problem in problems:
        assert isinstance(problem, ParamsError)
        assert problem.line is not None and 1 <= problem.line <= len(lines)
        assert SECRET not in str(problem), str(problem)


@FUZZ
@given(
    st.from_regex(r"[a-z][a-z0-9_]{0,10}(\.[a-z0-9_]{1,6})?", fullmatch=True),
    st.text(st.characters(blacklist_characters="#'\"\n\r", codec="utf-8"), max_size=20),
)
def test_a_plain_line_reads_back_as_written(key: str, value: str) -> None:
    values, problems = parse_params_text(f"{key} = {value}\n", "f.params")
    assert problems == [] and [(v.key, v.value) for v in values] == [(key, value.strip())]


# -- the settings loader -----------------------------------------------------------------------

SETTING_LINES = st.sampled_from(
    [
        f"database_password = {SECRET}",
        f"database_url = mysql://app:{SECRET}@db/itop",
        f"database_url = mysql://app@db/itop?password={SECRET}",
        f"database_url = mysql://app:{SECRET}@db:port/itop",
        f"database_url {SECRET}",
        f"{SECRET}",
        f"email.smtp_password = {SECRET}",
        "poll_interval = -1",
        "max_concurrency = 0",
        "timezone = Mars/Olympus",
        "log_level = loud",
        "backup.time = 25:99",
        "task_modules = 9bad",
        "unknown_key = 1",
        "Poll-Interval = 2",
    ]
)


@FUZZ
@given(
    st.lists(SETTING_LINES | LINE, max_size=8),
    st.dictionaries(
        st.sampled_from(["poll_interval", "lease_s", "timezone"]), st.text(max_size=20), max_size=2
    ),
)
def test_the_loader_gives_settings_or_a_config_error_without_secrets(
    tmp_path: Path, lines: list[str], flags: dict[str, str]
) -> None:
    path = tmp_path / "fuzz.params"
    path.write_text("\n".join(lines), encoding="utf-8")
    path.chmod(0o600)
    try:
        result = load_settings(param_file=str(path), overrides=flags, env={})
    except ConfigError as exc:
        assert SECRET not in str(exc), str(exc)
        return
    assert isinstance(result, Settings)
    assert SECRET not in repr(result)


@pytest.mark.parametrize(
    "line",
    [f"database_url = mysql://app:{SECRET}@db:port/itop", f"database_url {SECRET}"],
)
def test_regression_loader_errors_about_a_url_never_show_its_password(
    tmp_path: Path, line: str
) -> None:
    path = tmp_path / "one.params"
    path.write_text(line + "\n", encoding="utf-8")
    path.chmod(0o600)
    with pytest.raises(ConfigError) as info:
        load_settings(param_file=str(path), env={})
    assert SECRET not in str(info.value) and f"{path}:1" in str(info.value)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("mysql://app:P@SS@db/itop", "mysql://app:********@db/itop"),
        ("mysql://app:P/S:S@db:3306/itop", "mysql://app:********@db:3306/itop"),
        (
            "mysql://app@db/itop?PassWord=P%40SS&charset=utf8",
            "mysql://app@db/itop?PassWord=********&charset=utf8",
        ),
    ],
)
def test_regression_a_bare_at_sign_in_the_password_is_masked_whole(url: str, masked: str) -> None:
    """Found by the search above: a URL parser ends the password at its first '@' and
    showed the rest (``SS@db``) as the host."""
    assert mask_url(url) == masked
