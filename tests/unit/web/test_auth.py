"""The bearer token: read-only without one, 401 for a wrong one, 429 after repeated failures."""

from __future__ import annotations

import pytest

from cronloop.config.values import Secret
from cronloop.web import auth
from cronloop.web.auth import TokenCheck, Verdict

TOKEN = "t0ken-Value"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_without_a_token_the_api_is_read_only() -> None:
    check = TokenCheck(None, Clock())
    assert not check.enabled
    assert check.check(f"Bearer {TOKEN}", "1.2.3.4") is Verdict.READ_ONLY


@pytest.mark.parametrize(
    ("header", "verdict"),
    [
        (f"Bearer {TOKEN}", Verdict.OK),
        (f"bearer {TOKEN}", Verdict.OK),
        (None, Verdict.DENIED),
        ("", Verdict.DENIED),
        (f"Basic {TOKEN}", Verdict.DENIED),
        (f"Bearer {TOKEN}x", Verdict.DENIED),
        (f"Bearer {TOKEN[:-1]}", Verdict.DENIED),
    ],
)
def test_the_header_must_carry_the_token(header: str | None, verdict: Verdict) -> None:
    assert TokenCheck(Secret(TOKEN), Clock()).check(header, "peer") is verdict


def test_failures_are_throttled_per_address_until_the_window_passes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    clock = Clock()
    check = TokenCheck(Secret(TOKEN), clock)
    for _ in range(auth.FAILURES_PER_WINDOW):
        assert check.check("Bearer wrong", "10.0.0.1") is Verdict.DENIED
    # even the right token waits: the address is guessing
    assert check.check(f"Bearer {TOKEN}", "10.0.0.1") is Verdict.THROTTLED
    assert check.check(f"Bearer {TOKEN}", "10.0.0.2") is Verdict.OK
    clock.now += auth.WINDOW_S
    assert check.check(f"Bearer {TOKEN}", "10.0.0.1") is Verdict.OK
    out = capsys.readouterr()
    assert "wrong" not in out.out + out.err and TOKEN not in out.out + out.err


def test_the_addresses_remembered_are_bounded() -> None:
    check = TokenCheck(Secret(TOKEN), Clock())
    for i in range(auth.MAX_TRACKED + 10):
        check.check("Bearer wrong", f"peer{i}")
    assert len(check._failures) == auth.MAX_TRACKED
