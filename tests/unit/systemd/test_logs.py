"""cronloop.systemd.logs: the one way an error is shown in a log value."""

from __future__ import annotations

from cronloop.systemd.logs import short_error


def test_short_error_is_kind_and_first_line_cut_to_300() -> None:
    assert short_error(ValueError("bad\nSQL: SELECT ...")) == "ValueError: bad"
    assert short_error(TimeoutError()) == "TimeoutError: "
    assert len(short_error(RuntimeError("x" * 1000))) == 300
