"""Leases under clock skew (`max_clock_skew_s`), over every store: memory, SQLite, MariaDB.

A lease stamped by one node of a cluster is compared with another node's clock, which may
be ahead by up to `max_clock_skew_s`: so a lease counts as expired only once it ended more
than that long ago, for every decision that reads expiry (claims, `next_due`, the job
queue's takeover, reaping, `status`). The clock is injected where leases read it: each
test sets `lease_until` relative to the database's own clock (`lease_expired_by`), so the
arithmetic is checked to the second without sleeping.
"""

from __future__ import annotations

from typing import cast

from store_backends import NOW, Backend, decl

from cronloop.store.interface import JobStore

SKEW_S = 2.0
ALL = {"hook": None}


async def test_a_lease_expired_by_less_than_the_skew_is_not_taken_over(backend: Backend) -> None:
    owner = backend.store("w1")
    await owner.sync_tasks([decl("a")])
    [claim] = await owner.claim_due(NOW, 1)
    other = backend.store("w2", max_clock_skew_s=SKEW_S)
    await backend.lease_expired_by(SKEW_S / 2)
    assert await other.claim_due(NOW, 10) == []
    assert await other.next_due() is None  # nothing free to wake up for
    assert await other.reap_abandoned() == 0
    assert [s.running for s in await other.status()] == [True]
    await backend.lease_expired_by(SKEW_S + 1)
    assert await other.next_due() == NOW
    [taken] = await other.claim_due(NOW, 10)
    assert taken.took_over == claim.run_id


async def test_without_skew_an_expired_lease_is_taken_over_at_once(backend: Backend) -> None:
    owner = backend.store("w1")
    await owner.sync_tasks([decl("a")])
    await owner.claim_due(NOW, 1)
    await backend.lease_expired_by(-5)  # still running for 5 s
    assert await backend.store("w2").claim_due(NOW, 10) == []
    await backend.lease_expired_by(0.5)
    assert len(await backend.store("w3").claim_due(NOW, 10)) == 1


async def test_the_skew_holds_back_reaping_the_history_row(backend: Backend) -> None:
    owner = backend.store("w1")
    await owner.sync_tasks([decl("a")])
    await owner.claim_due(NOW, 1)
    await backend.lease_expired_by(SKEW_S / 2)
    assert await backend.store("w2", max_clock_skew_s=SKEW_S).reap_abandoned() == 0
    await backend.lease_expired_by(SKEW_S + 1)
    assert await backend.store("w3", max_clock_skew_s=SKEW_S).reap_abandoned() == 1


async def test_a_job_lease_expired_by_less_than_the_skew_is_not_taken_over(
    backend: Backend,
) -> None:
    owner = cast(JobStore, backend.store("w1"))
    await owner.enqueue_job("hook", {}, run_at=NOW)
    [first] = await owner.acquire_jobs(NOW, 10, ALL)
    other = cast(JobStore, backend.store("w2", max_clock_skew_s=SKEW_S))
    await backend.job_leases_expired_by(SKEW_S / 2)
    assert await other.acquire_jobs(NOW, 10, ALL) == []
    await backend.job_leases_expired_by(SKEW_S + 1)
    [taken] = await other.acquire_jobs(NOW, 10, ALL)
    assert taken.job_id == first.job_id and taken.took_over and taken.token != first.token
