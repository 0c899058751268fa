"""Every move of the state machine, raced by two actors against a real PostgreSQL.

See docs/state-machine.md: each test here is named after the rule it proves.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable
from datetime import timedelta
from typing import TypeVar

import asyncpg

from pqrun import JobStatus, PgJobStore

from .helpers import picked

T = TypeVar("T")


async def later(delay: float, step: Awaitable[T]) -> T:
    await asyncio.sleep(delay)
    return await step


async def test_concurrent_pickups_claim_each_job_once(dsn: str, store: PgJobStore) -> None:
    for n in range(200):
        await store.enqueue("t", {"n": n})
    stores = [PgJobStore(dsn) for _ in range(8)]
    for s in stores:
        await s.start()
    try:
        claimed: list[int] = []
        while True:
            rounds = await asyncio.gather(
                *(s.pickup_batch(f"w{i}", ["t"], 13) for i, s in enumerate(stores))
            )
            batch = [job.id for jobs in rounds for job in jobs]
            if not batch:
                break
            claimed += batch
    finally:
        for s in stores:
            await s.close()
    assert len(claimed) == 200
    assert len(set(claimed)) == 200


async def test_pickup_skips_rows_locked_by_others_without_waiting(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    first = await store.enqueue("t")
    second = await store.enqueue("t")
    async with conn.transaction():
        await conn.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", first)
        job = await asyncio.wait_for(store.pickup("w"), timeout=30)
        assert job is not None
        assert job.id == second
    job = await store.pickup("w")
    assert job is not None
    assert job.id == first


async def test_pickup_order_is_priority_then_due_time(store: PgJobStore) -> None:
    low = await store.enqueue("t", priority=0)
    high = await store.enqueue("t", priority=5)
    older_due = await store.enqueue("t", priority=0, run_after=timedelta(seconds=-60))
    order = [(await picked(store, "w")).id for _ in range(3)]
    assert order == [high, older_due, low]


async def test_pickup_takes_only_handled_types_and_the_rest_stays_ready(
    store: PgJobStore,
) -> None:
    known = await store.enqueue("known")
    unknown = await store.enqueue("from_a_newer_deploy")
    job = await picked(store, "w", ["known"])
    assert job.id == known
    assert await store.pickup("w", ["known"]) is None
    waiting = await store.list_jobs(status="READY")
    assert [j.id for j in waiting] == [unknown]


async def test_late_ack_after_reap_and_repick_changes_nothing(
    store: PgJobStore, other: PgJobStore
) -> None:
    job_id = await store.enqueue("t", max_attempts=3)
    by_a = await picked(store, "worker-a")
    assert await other.reap_stale(timedelta(0)) == [(job_id, JobStatus.READY)]
    by_b = await picked(other, "worker-b")
    assert by_b.attempts == 2
    assert not await store.mark_done(by_a, {"from": "a"})
    assert await store.mark_error(by_a, "a failed late") is None
    assert await store.release([by_a], "a shutting down") == []
    now = await store.get_job(job_id)
    assert now is not None
    assert (now.status, now.locked_by, now.attempts) == (JobStatus.RUNNING, "worker-b", 2)
    assert await other.mark_done(by_b, {"from": "b"})
    done = await store.get_job(job_id)
    assert done is not None
    assert (done.status, done.result) == (JobStatus.DONE, {"from": "b"})


async def test_late_ack_after_cancel_never_resurrects(store: PgJobStore, other: PgJobStore) -> None:
    job_id = await store.enqueue("t")
    job = await picked(store, "worker-a")
    assert await other.cancel(job_id)
    assert await store.mark_error(job, "handler raised after cancel") is None
    assert not await store.mark_done(job, {"late": True})
    # Cancel keeps the claim's owner, attempt and lease: only the status test stops a
    # completion in a batch (as with any job another worker's batch completes).
    other_id = await store.enqueue("t")
    other_job = await picked(store, "worker-a")
    moved = await store.mark_done_batch([(job, '{"late": true}', 1), (other_job, "null", 1)])
    assert moved == {(other_id, other_job.lease_id)}
    assert await store.release([job], "shutdown") == []
    assert await other.reap_stale(timedelta(0)) == []
    assert await store.pickup("worker-a") is None
    final = await store.get_job(job_id)
    assert final is not None
    assert final.status is JobStatus.CANCELLED
    assert final.result is None


async def test_reaper_racing_completion_lets_exactly_one_win(
    store: PgJobStore, other: PgJobStore
) -> None:
    outcomes: Counter[str] = Counter()
    for _ in range(40):
        job_id = await store.enqueue("t", max_attempts=5)
        job = await picked(store, "worker-a")
        # Every other round the reaper starts well ahead, so both outcomes are seen; the
        # other rounds start both within a millisecond of each other: a real race.
        head_start = 0.0 if sum(outcomes.values()) % 2 else 0.02
        done, reaped = await asyncio.gather(
            later(head_start + random.random() / 1000, store.mark_done(job, {"ok": True})),
            later(random.random() / 1000, other.reap_stale(timedelta(0))),
        )
        final = await store.get_job(job_id)
        assert final is not None
        if done:
            assert reaped == []
            assert final.status is JobStatus.DONE
            outcomes["done"] += 1
        else:
            assert reaped == [(job_id, JobStatus.READY)]
            assert final.status is JobStatus.READY
            assert final.result is None
            outcomes["reaped"] += 1
            await store.cancel(job_id)
    assert sum(outcomes.values()) == 40
    assert outcomes["done"] > 0
    assert outcomes["reaped"] > 0


async def test_cancel_racing_completion_lets_exactly_one_win(
    store: PgJobStore, other: PgJobStore
) -> None:
    for _ in range(40):
        job_id = await store.enqueue("t")
        job = await picked(store, "worker-a")
        done, cancelled = await asyncio.gather(
            later(random.random() / 500, store.mark_done(job)),
            later(random.random() / 500, other.cancel(job_id)),
        )
        assert done != cancelled
        final = await store.get_job(job_id)
        assert final is not None
        assert final.status is (JobStatus.DONE if done else JobStatus.CANCELLED)


async def test_two_reapers_take_a_job_back_once(store: PgJobStore, other: PgJobStore) -> None:
    ids = [await store.enqueue("t") for _ in range(50)]
    await store.pickup_batch("worker-a", None, 50)
    first, second = await asyncio.gather(
        store.reap_stale(timedelta(0)), other.reap_stale(timedelta(0))
    )
    taken = [job_id for job_id, _ in first + second]
    assert sorted(taken) == ids


async def test_reaper_skips_a_row_being_completed(store: PgJobStore, dsn: str) -> None:
    job_id = await store.enqueue("t")
    job = await picked(store, "worker-a")
    completing = await asyncpg.connect(dsn)
    try:
        async with completing.transaction():
            await completing.execute(
                "UPDATE jobs SET status = 'DONE' WHERE id = $1 AND status = 'RUNNING' "
                "AND locked_by = $2 AND attempts = $3",
                job.id,
                job.locked_by,
                job.attempts,
            )
            # The reaper neither waits for that transaction nor touches the row.
            assert await asyncio.wait_for(store.reap_stale(timedelta(0)), 2) == []
    finally:
        await completing.close()
    assert (await store.get_job(job_id)).status is JobStatus.DONE  # type: ignore[union-attr]


async def test_max_attempts_holds_across_crashes(store: PgJobStore, other: PgJobStore) -> None:
    job_id = await store.enqueue("t", max_attempts=2)
    await picked(store, "crashing-worker")  # and never answers
    assert await other.reap_stale(timedelta(0)) == [(job_id, JobStatus.READY)]
    reaped = await store.get_job(job_id)
    assert reaped is not None
    assert reaped.last_error is not None
    assert reaped.last_error.startswith("reaped: attempt 1 of 2 (worker crashing-worker,")
    await picked(store, "crashing-worker")
    assert await other.reap_stale(timedelta(0)) == [(job_id, JobStatus.FAILED)]
    failed = await store.get_job(job_id)
    assert failed is not None
    assert failed.status is JobStatus.FAILED
    assert failed.last_error is not None
    assert failed.last_error.startswith("abandoned: attempt 2 of 2")
    assert failed.finished_at is not None
    assert await store.pickup("w") is None


async def test_a_heartbeat_keeps_a_long_job_from_the_reaper(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    alive = await store.enqueue("t")
    silent = await store.enqueue("t")
    jobs = await store.pickup_batch("w", None, 2)
    # Both were claimed an hour ago; only one of them has heartbeats since.
    await conn.execute(
        "UPDATE jobs SET locked_at = now() - interval '1 hour', "
        "heartbeat_at = now() - interval '1 hour'"
    )
    assert await store.heartbeat("w", [j for j in jobs if j.id == alive]) == {alive}
    assert await store.reap_stale(timedelta(seconds=30)) == [(silent, JobStatus.READY)]
    assert (await store.get_job(alive)).status is JobStatus.RUNNING  # type: ignore[union-attr]


async def test_a_heartbeat_from_an_old_claim_changes_nothing(store: PgJobStore) -> None:
    job_id = await store.enqueue("t")
    old = await picked(store, "w")
    await store.reap_stale(timedelta(0))
    new = await picked(store, "w")
    assert await store.heartbeat("w", [old]) == set()
    assert await store.heartbeat("w", [new]) == {job_id}


async def test_the_registry_lists_live_workers_and_forgets_dead_ones(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    await store.heartbeat("alive", [], job_types=["a"], concurrency=4)
    await store.heartbeat("dead", [], job_types=["b"])
    await conn.execute(
        "UPDATE job_workers SET heartbeat_at = now() - interval '1 hour' WHERE worker_id = 'dead'"
    )
    await store.reap_stale(timedelta(seconds=30))
    (worker,) = await store.list_workers()
    assert (worker["worker_id"], worker["job_types"], worker["concurrency"]) == ("alive", ["a"], 4)
    await store.leave("alive")
    assert await store.list_workers() == []
    await conn.execute("DELETE FROM job_workers")


async def test_error_schedules_retry_on_the_database_clock(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    job_id = await store.enqueue("t", max_attempts=2)
    job = await picked(store, "w")
    assert await store.mark_error(job, "boom", retry_after=timedelta(minutes=5)) is JobStatus.READY
    row = await conn.fetchrow(
        "SELECT run_after - updated_at AS delay, locked_by, status FROM jobs WHERE id = $1",
        job_id,
    )
    assert row is not None
    assert row["delay"] == timedelta(minutes=5)
    assert row["locked_by"] is None
    assert await store.pickup("w") is None  # not due for five minutes
    await conn.execute("UPDATE jobs SET run_after = now() WHERE id = $1", job_id)
    second = await picked(store, "w")
    assert await store.mark_error(second, "boom again") is JobStatus.FAILED


async def test_terminal_error_fails_at_once(store: PgJobStore) -> None:
    await store.enqueue("t", max_attempts=5)
    job = await picked(store, "w")
    assert await store.mark_error(job, "bad input", terminal=True) is JobStatus.FAILED


async def test_release_returns_a_job_at_once_without_spending_an_attempt(
    store: PgJobStore,
) -> None:
    job_id = await store.enqueue("t", max_attempts=1)
    job = await picked(store, "w")
    assert await store.release([job], "shutting down") == [job_id]
    back = await store.get_job(job_id)
    assert back is not None
    assert (back.status, back.attempts, back.locked_by) == (JobStatus.READY, 0, None)
    assert (await picked(store, "w")).id == job_id
