"""Idle workers wake on NOTIFY, sleep until known due times, and survive a lost listener.

Every worker here polls only once a minute, so a job run within WAKE_WITHIN seconds was
found by a notification or a known due time, not by polling. No test bounds a latency:
on a busy machine anything may take seconds, but never a minute.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import asyncpg
import pytest

from pqrun import IdlePollPolicy, JobContext, LoopErrorPolicy, PgJobStore, Worker

from .helpers import listener_pids, status_of, wait_until

POLL_SECONDS = 60.0
# Far below POLL_SECONDS, and below LISTEN_PROBE_EVERY (30 s), whose probe also wakes
# the fetch loop; far above anything a wake-up takes on a loaded machine.
WAKE_WITHIN = 20.0


@dataclass
class Idle:
    worker: Worker
    starts: dict[int, float]  # job id -> monotonic time its handler started
    since: datetime  # the database's clock before the worker started


@pytest.fixture
async def started(store: PgJobStore, conn: asyncpg.Connection) -> AsyncIterator[Idle]:
    """A running, idle, listening worker."""
    starts: dict[int, float] = {}
    idle_sleeps: list[int] = []

    class SlowPoll(IdlePollPolicy):
        def next_sleep(self, consecutive_idle: int) -> float:
            idle_sleeps.append(consecutive_idle)
            return super().next_sleep(consecutive_idle)

    async def handler(ctx: JobContext) -> None:
        starts[ctx.job.id] = time.monotonic()

    worker = Worker(
        store=store,
        handlers={"t": handler},
        idle_policy=SlowPoll(base_seconds=POLL_SECONDS, max_seconds=POLL_SECONDS),
        loop_error_policy=LoopErrorPolicy(0.05, 0.2),
        enable_reaper=False,
    )
    since = await conn.fetchval("SELECT clock_timestamp()")
    await worker.start()
    try:
        # Idle (a claim found nothing: it sleeps a whole poll interval) and listening:
        # from here on, only a notification or a known due time wakes it.
        await wait_until(lambda: _listening(conn, since), within=30)
        await wait_until(lambda: _true(bool(idle_sleeps)), within=30)
        await asyncio.sleep(0.3)  # the claim the listener's start triggers, if still under way
        yield Idle(worker, starts, since)
    finally:
        await worker.stop()


async def _true(value: bool) -> bool:
    return value


async def _listening(conn: asyncpg.Connection, since: datetime) -> bool:
    return bool(await listener_pids(conn, since))


async def test_plain_sql_insert_wakes_an_idle_worker(
    started: Idle, conn: asyncpg.Connection
) -> None:
    starts = started.starts
    job_id = await conn.fetchval("INSERT INTO jobs (job_type) VALUES ('t') RETURNING id")

    async def ran() -> bool:
        return job_id in starts

    await wait_until(ran, within=WAKE_WITHIN)  # long before the next poll


async def test_delayed_job_starts_when_due_not_at_the_next_poll(
    started: Idle, store: PgJobStore, conn: asyncpg.Connection
) -> None:
    starts = started.starts
    before = time.monotonic()
    job_id = await store.enqueue("t", run_after=timedelta(seconds=2))

    async def ran() -> bool:
        return job_id in starts

    # Not at once: the insert's notification wakes the worker, and it must not run the
    # job early. Its claim (by the database's clock) came when the job was due.
    await wait_until(ran, within=WAKE_WITHIN)  # long before the next poll
    row = await conn.fetchrow("SELECT locked_at, run_after FROM jobs WHERE id = $1", job_id)
    assert row is not None
    assert row["locked_at"] >= row["run_after"]
    assert starts[job_id] - before >= 1.9  # (the monotonic clock may tick a little apart)


async def test_worker_listens_again_after_losing_its_listen_connection(
    started: Idle, store: PgJobStore, conn: asyncpg.Connection
) -> None:
    starts = started.starts
    (old_pid,) = await listener_pids(conn, started.since)
    await conn.execute("SELECT pg_terminate_backend($1)", old_pid)

    async def listening_again() -> bool:
        pids = await listener_pids(conn, started.since)
        return bool(pids) and old_pid not in pids

    await wait_until(listening_again, within=30)
    job_id = await store.enqueue("t")

    async def ran() -> bool:
        return job_id in starts

    await wait_until(ran, within=WAKE_WITHIN)  # long before the next poll


async def test_retry_wakes_an_idle_worker(started: Idle, store: PgJobStore) -> None:
    starts = started.starts
    job_id = await store.enqueue("t", run_after=timedelta(hours=1))
    assert await store.cancel(job_id)
    await asyncio.sleep(0.2)
    assert await store.retry(job_id)

    async def ran() -> bool:
        return job_id in starts

    await wait_until(ran, within=WAKE_WITHIN)  # long before the next poll
    await wait_until(lambda: _done(store, job_id), within=30)


async def _done(store: PgJobStore, job_id: int) -> bool:
    return await status_of(store, job_id) == "DONE"


async def test_the_listener_probe_tells_a_deaf_connection_from_a_live_one(
    store: PgJobStore, dsn: str
) -> None:
    async def noop(ctx: JobContext) -> None:
        return None

    worker = Worker(store=store, handlers={"t": noop})
    listening = await store.listen(worker._on_notification)
    deaf = await asyncpg.connect(dsn)  # connected, but LISTENing to nothing
    try:
        assert await worker._hears_itself(listening)
        listening.terminate()  # now nothing of this worker listens
        began = time.monotonic()
        assert not await asyncio.wait_for(worker._hears_itself(deaf), 60)
        # It gives up after a few seconds: well within the probe interval (30 s).
        assert time.monotonic() - began < 20
    finally:
        listening.terminate()
        await deaf.close()


async def test_a_job_waited_for_right_after_its_enqueue_is_not_passed_over(
    started: Idle, store: PgJobStore
) -> None:
    # wait() flags the job as awaited: an UPDATE of its row, sent as soon as the enqueue
    # commits, just when the claim of the worker it woke passes over locked rows.
    for _ in range(20):
        job_id = await store.enqueue("t")
        job = await store.wait(job_id, timeout=WAKE_WITHIN)
        assert job.status == "DONE"


async def test_one_job_woken_for_costs_one_claim(
    dsn: str, store: PgJobStore, conn: asyncpg.Connection
) -> None:
    claims = 0

    class CountingStore(PgJobStore):
        async def pickup_batch(self, worker_id: str, job_types: Any, limit: int) -> Any:
            nonlocal claims
            claims += 1
            return await super().pickup_batch(worker_id, job_types, limit)

    counting = CountingStore(dsn)

    async def job(ctx: JobContext) -> None:
        return None

    polls = IdlePollPolicy(POLL_SECONDS, POLL_SECONDS)
    since = await conn.fetchval("SELECT clock_timestamp()")
    try:
        async with Worker(counting, {"job": job}, idle_policy=polls).lifespan(None):
            await wait_until(lambda: _listening(conn, since), within=30)
            # At start, and when listening (if that one is still under way, it counts
            # among the two claims the assertion below allows beyond one per job).
            await wait_until(lambda: _true(claims >= 2))
            before = claims
            for _ in range(10):
                job_id = await counting.enqueue("job")
                # (Not wait(): it may announce the job once more, and wake another claim.)
                await wait_until(partial(_done, counting, job_id), within=WAKE_WITHIN)
            # One claim per job the worker was woken for: a claim that got fewer jobs
            # than it asked for is not followed by another that can only find nothing.
            assert claims - before <= 10 + 2, claims - before
    finally:
        await counting.close()
