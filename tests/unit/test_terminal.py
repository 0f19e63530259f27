"""Control characters in what an operator's terminal shows (issue 10 item 9)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cronloop.cli.display import table
from cronloop.terminal import escape_console_event, escape_controls


def test_control_characters_are_shown_as_escapes() -> None:
    assert escape_controls("a\x1b[31mred\x07\x00\x7f\x9b") == "a\\x1b[31mred\\x07\\x00\\x7f\\x9b"
    assert escape_controls("evil\u202eexe.txt \u2028x") == "evil\\u202eexe.txt \\u2028x"
    assert escape_controls("caf\udce9 ok é \\n") == "caf\\udce9 ok é \\n"
    assert escape_controls("two\nlines\t!", keep_newlines=True) == "two\nlines\\x09!"


def test_a_table_cell_cannot_steer_the_terminal() -> None:
    out = table(("Task", "Message"), [("t", "\x1b[2Jgone\nsecond line")])
    assert "\x1b" not in out and out.count("\n") == 2
    assert "\\x1b[2Jgone\\x0asecond line" in out


def test_console_log_values_are_escaped_and_keep_their_lines() -> None:
    event = {"event": "run finished", "message": "\x1b]0;title\x07x", "n": 3, "tb": "a\nb"}
    assert escape_console_event(None, "info", event) == {
        "event": "run finished",
        "message": "\\x1b]0;title\\x07x",
        "n": 3,
        "tb": "a\nb",
    }


@given(st.text())
def test_escaped_text_has_no_control_character_and_prints(text: str) -> None:
    out = escape_controls(text)
    out.encode("utf-8")  # a lone surrogate would make print() fail
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in out)


def test_cli_error_messages_are_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    """What the CLI prints on an error may quote a driver's or a dump tool's message."""
    from cronloop.cli.main import _say

    _say("cronloop: backup failed: mariadb-dump: \x1b]0;owned\x07\nsecond line")
    err = capsys.readouterr().err
    assert err == "cronloop: backup failed: mariadb-dump: \\x1b]0;owned\\x07\nsecond line\n"
