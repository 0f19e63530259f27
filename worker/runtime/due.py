"""What the loop knows of when the next run is due, so that it asks the database as
little as possible.

Every claim says when the next available run is due (`ClaimBatch.next_due`), and every
run that ends says when that task runs next. Between those, the loop sleeps until the
next due time without a query. What it knows is only trusted for `poll_interval`:
operators trigger and pause tasks, other workers claim and finish runs, so after that the
loop asks again with one cheap probe. An idle worker therefore sends one query per poll,
a busy one only the claims and recordings its runs need.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

# how far ahead of a due time the loop wakes to claim it: a claim takes a few round trips
# and a commit, which would otherwise all be lateness; the run itself starts at its time
MIN_LEAD_S = 0.002
MAX_LEAD_S = 0.02
# one claim takes every run due within this window, each started at its own time: at a
# steady 100 runs/s that is one claim transaction for 10 runs instead of one per run.
# Short against any lease, so the runs claimed ahead need no renewal before they start.
CLAIM_AHEAD_S = 0.1


@dataclass
class DueTracker:
    poll_interval: float
    next_due: datetime | None = None
    learned_mono: float | None = None  # when next_due was read from the database
    more: bool = False  # the last claim was a full batch: more may be due right now
    claim_s: float = 0.002  # moving average of how long a claim takes

    @property
    def lead_s(self) -> float:
        """How early to wake and claim: enough for a typical claim, with a margin."""
        return min(MAX_LEAD_S, max(MIN_LEAD_S, 1.5 * self.claim_s + 0.0005))

    def claimed_in(self, seconds: float) -> None:
        self.claim_s += 0.2 * (seconds - self.claim_s)

    @property
    def ahead_s(self) -> float:
        """How far ahead one claim reaches: `CLAIM_AHEAD_S`, or the lead if longer."""
        return max(CLAIM_AHEAD_S, self.lead_s)

    def claim_at(self, now: datetime) -> datetime:
        """The instant to claim for. Once the next due time is at most `lead_s` away (or
        past), one claim takes every run due up to `ahead_s` from now, made early, each run
        started at its own time; while it is further away, `now` (nothing to take yet)."""
        due = self.next_due
        if due is not None and due <= now + timedelta(seconds=self.lead_s):
            return now + timedelta(seconds=self.ahead_s)
        return now

    def fresh(self, mono: float) -> bool:
        return self.learned_mono is not None and mono - self.learned_mono < self.poll_interval

    def learn(self, next_due: datetime | None, mono: float) -> None:
        """The database said (probe or claim) when the next available run is due."""
        self.next_due = next_due
        self.learned_mono = mono

    def after_claim(self, next_due: datetime | None, at: datetime, mono: float) -> None:
        """A claim for `at` said when the next available run is due; if that is due at
        `at` already, more was due than one claim took, and the next claim is bigger."""
        self.learn(next_due, mono)
        self.more = next_due is not None and next_due <= at

    def forget(self) -> None:
        """A database call failed: ask again before trusting anything."""
        self.learned_mono = None

    def nothing_due(self, now: datetime, mono: float) -> bool:
        """Fresh knowledge says no run is due at `now`: no claim needed."""
        if self.more or not self.fresh(mono):
            return False
        return self.next_due is None or self.next_due > now

    def ended(self, next_run: datetime | None) -> bool:
        """A run ended and its task runs next at `next_run`; True if that is earlier than
        anything known, so the loop should wake to plan its sleep again."""
        if next_run is None or (self.next_due is not None and self.next_due <= next_run):
            return False
        self.next_due = next_run
        return True

    def sleep_s(self, now: datetime, mono: float) -> float:
        """How long the loop may sleep: until `lead_s` before the next due run that is
        not claimed yet, at most `poll_interval`."""
        delay = self.poll_interval
        if self.learned_mono is not None:
            delay = min(delay, max(0.0, self.learned_mono + self.poll_interval - mono))
        if self.next_due is not None:
            delay = min(delay, max(0.0, (self.next_due - now).total_seconds() - self.lead_s))
        return delay
