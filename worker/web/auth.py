"""The web API's bearer token: constant-time comparison, and failed attempts throttled.

Without `http_token` the API is read-only: every POST is 403. A wrong or missing token on
a POST is 401 and logged (the client's address, never what it sent); after
`FAILURES_PER_WINDOW` failures in `WINDOW_S` from one address, further attempts are 429
without being compared or logged again, until the window passes. It never knows what the
endpoints do.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from enum import Enum

import structlog

from cronloop.config.values import Secret

log = structlog.get_logger("cronloop.web")

FAILURES_PER_WINDOW = 5
WINDOW_S = 60.0
MAX_TRACKED = 1024  # addresses remembered at most: an attacker cannot grow memory


class Verdict(Enum):
    OK = 200
    READ_ONLY = 403
    DENIED = 401
    THROTTLED = 429


class TokenCheck:
    def __init__(self, token: Secret | None, monotonic: Callable[[], float]) -> None:
        self._token = token.reveal().encode() if token is not None else None
        self._monotonic = monotonic
        self._failures: dict[str, list[float]] = {}

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def check(self, authorization: str | None, peer: str) -> Verdict:
        """The verdict on one request's `Authorization` header from `peer`."""
        if self._token is None:
            return Verdict.READ_ONLY
        now = self._monotonic()
        recent = [t for t in self._failures.get(peer, ()) if now - t < WINDOW_S]
        if len(recent) >= FAILURES_PER_WINDOW:
            return Verdict.THROTTLED
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token):
            return Verdict.OK
        self._remember(peer, [*recent, now])
        log.warning("web API: authentication failed", peer=peer, failures=len(recent) + 1)
        return Verdict.DENIED

    def _remember(self, peer: str, times: list[float]) -> None:
        if peer not in self._failures and len(self._failures) >= MAX_TRACKED:
            self._failures.pop(next(iter(self._failures)))
        self._failures[peer] = times
