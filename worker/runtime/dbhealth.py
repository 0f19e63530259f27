"""Where the service's own database calls report failure and success."""

from __future__ import annotations


class DbHealth:
    """Where the service's database calls report failure and success, so the supervisor
    knows of an outage even when its own loop makes no call (every slot busy with runs
    waiting to be recorded). The supervisor's implementation logs it and delays takeovers
    after it; this default ignores it."""

    def failed(self, exc: BaseException) -> None:
        """A database call failed."""

    def ok(self) -> None:
        """A database call succeeded."""
