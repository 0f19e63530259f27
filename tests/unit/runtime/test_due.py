"""What the loop knows of the next due time, and how long it sleeps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cronloop.runtime.due import CLAIM_AHEAD_S, MAX_LEAD_S, MIN_LEAD_S, DueTracker

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def test_knowledge_is_trusted_for_one_poll_interval() -> None:
    due = DueTracker(poll_interval=2.0)
    assert not due.fresh(100.0) and not due.nothing_due(T0, 100.0)  # unknown: ask
    due.learn(T0 + timedelta(seconds=5), mono=100.0)
    assert due.fresh(101.9) and not due.fresh(102.0)
    assert due.nothing_due(T0, 101.0)
    assert not due.nothing_due(T0 + timedelta(seconds=5), 101.0)
    due.forget()
    assert not due.fresh(100.5)


def test_nothing_known_to_be_due_and_none_at_all() -> None:
    due = DueTracker(poll_interval=2.0)
    due.learn(None, mono=0.0)
    assert due.nothing_due(T0, 1.0)
    assert due.sleep_s(T0, 1.0) == 1.0  # until the knowledge goes stale


def test_more_due_means_claim_again() -> None:
    due = DueTracker(poll_interval=2.0)
    due.learn(T0 + timedelta(hours=1), mono=0.0)
    due.more = True
    assert not due.nothing_due(T0, 0.5)


def test_a_run_that_ends_earlier_than_anything_known_wakes_the_loop() -> None:
    due = DueTracker(poll_interval=2.0)
    due.learn(T0 + timedelta(seconds=10), mono=0.0)
    assert not due.ended(T0 + timedelta(seconds=20))
    assert due.ended(T0 + timedelta(seconds=3)) and due.next_due == T0 + timedelta(seconds=3)
    assert not due.ended(None)


def test_sleeps_until_the_lead_before_the_next_run() -> None:
    due = DueTracker(poll_interval=10.0)
    due.learn(T0 + timedelta(seconds=1), mono=0.0)
    assert due.sleep_s(T0, 0.0) == 1.0 - due.lead_s
    assert due.sleep_s(T0 + timedelta(seconds=2), 0.0) == 0.0  # overdue: no sleep


def test_the_lead_follows_the_claims_within_bounds() -> None:
    due = DueTracker(poll_interval=2.0)
    for _ in range(50):
        due.claimed_in(0.0001)
    assert due.lead_s == MIN_LEAD_S
    for _ in range(50):
        due.claimed_in(1.0)
    assert due.lead_s == MAX_LEAD_S
    due.claim_s = 0.004
    soon, far = T0 + timedelta(milliseconds=3), T0 + timedelta(milliseconds=50)
    due.learn(soon, mono=0.0)
    window = T0 + timedelta(seconds=CLAIM_AHEAD_S)
    assert due.claim_at(T0) == window  # the window's runs, each started at its time
    due.learn(T0 - timedelta(seconds=1), mono=0.0)
    assert due.claim_at(T0) == window  # late: what is due, and the window after it
    due.learn(far, mono=0.0)
    assert due.claim_at(T0) == T0  # not within the lead yet: nothing to take
