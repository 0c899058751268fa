"""Heartbeats: a long job of a live worker is never reaped; a dead worker's jobs are.

The stale period here is STALE (2 s, a heartbeat every third of a second): short enough
for jobs that outlast it twice, long enough that a busy machine never misses it.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import asyncpg

from pqrun import JobContext, JobStatus, PgJobStore, Worker

from .helpers import QUICK_POLICIES, status_of, wait_until

STALE = timedelta(seconds=2)
LONG_JOB_SECONDS = 5.0  # two and a half stale periods


async def test_a_job_longer_than_the_stale_period_is_not_reaped_while_its_worker_lives(
    dsn: str, store: PgJobStore
) -> None:
    async def long_job(ctx: JobContext) -> str:
        await asyncio.sleep(LONG_JOB_SECONDS)
        return "finished"

    worker = Worker(
        store=store,
        handlers={"t": long_job},
        default_stale_after=STALE,
        enable_reaper=False,
        **QUICK_POLICIES,
    )
    reaper = PgJobStore(dsn)
    job_id = await store.enqueue("t")
    reaped: list[tuple[int, JobStatus]] = []
    await worker.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and await status_of(store, job_id) != "DONE":
            reaped += await reaper.reap_stale(STALE)
            await asyncio.sleep(0.2)
    finally:
        await worker.stop()
        await reaper.close()
    assert reaped == []
    job = await store.get_job(job_id)
    assert job is not None
    assert (job.status, job.attempts) == (JobStatus.DONE, 1)


async def test_a_worker_is_registered_while_it_runs(store: PgJobStore) -> None:
    async def noop(ctx: JobContext) -> None:
        return None

    worker = Worker(store=store, handlers={"b": noop, "a": noop}, concurrency=3, **QUICK_POLICIES)
    await worker.start()
    try:

        async def registered() -> bool:
            return any(w["worker_id"] == worker.worker_id for w in await store.list_workers())

        await wait_until(registered)
        (row,) = [w for w in await store.list_workers() if w["worker_id"] == worker.worker_id]
        assert (row["job_types"], row["concurrency"]) == (["a", "b"], 3)
    finally:
        await worker.stop()
    assert all(w["worker_id"] != worker.worker_id for w in await store.list_workers())


async def test_the_reaper_takes_back_a_dead_workers_job_after_one_stale_period(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    async def noop(ctx: JobContext) -> str:
        return "run again"

    job_id = await store.enqueue("t")
    await store.pickup("a-worker-that-died")  # and never heartbeats
    worker = Worker(
        store=store,
        handlers={"t": noop},
        default_stale_after=timedelta(seconds=1),
        reap_stale_every_seconds=0.1,
        **QUICK_POLICIES,
    )
    began = time.monotonic()
    await worker.start()
    try:
        await wait_until(lambda: _done(store, job_id), within=60)
    finally:
        await worker.stop()
    # Not before the dead worker's claim was a whole stale period old.
    assert time.monotonic() - began >= 1.0
    job = await store.get_job(job_id)
    assert job is not None
    assert job.attempts == 2
    assert job.last_error is None  # DONE: the reaper's word is in the history
    (reaped,) = await store.error_history(job_id)
    assert reaped.error.startswith("reaped: attempt 1 of 5 (worker a-worker-that-died,")


async def _done(store: PgJobStore, job_id: int) -> bool:
    return await status_of(store, job_id) == "DONE"


async def _reap_meanwhile(dsn: str, until: asyncio.Event) -> list[tuple[int, JobStatus]]:
    reaper = PgJobStore(dsn)
    reaped: list[tuple[int, JobStatus]] = []
    try:
        while not until.is_set():
            reaped += await reaper.reap_stale(STALE)
            await asyncio.sleep(0.2)
    finally:
        await reaper.close()
    return reaped


async def test_heartbeats_go_on_through_the_shutdown_grace(dsn: str, store: PgJobStore) -> None:
    started = asyncio.Event()

    async def long_job(ctx: JobContext) -> str:
        started.set()
        await asyncio.sleep(LONG_JOB_SECONDS)
        return "finished within the grace"

    worker = Worker(
        store=store,
        handlers={"t": long_job},
        default_stale_after=STALE,
        shutdown_grace=30,
        shutdown_timeout=40,
        enable_reaper=False,
        **QUICK_POLICIES,
    )
    job_id = await store.enqueue("t")
    done = asyncio.Event()
    reaping = asyncio.create_task(_reap_meanwhile(dsn, done))
    await worker.start()
    await asyncio.wait_for(started.wait(), 30)
    await worker.stop()
    done.set()
    assert await reaping == []
    assert await status_of(store, job_id) == "DONE"


async def test_drain_heartbeats_its_jobs(dsn: str, store: PgJobStore) -> None:
    async def long_job(ctx: JobContext) -> str:
        await asyncio.sleep(LONG_JOB_SECONDS)
        return "finished"

    worker = Worker(
        store=store,
        handlers={"t": long_job},
        default_stale_after=STALE,
        **QUICK_POLICIES,
    )
    job_id = await store.enqueue("t")
    done = asyncio.Event()
    reaping = asyncio.create_task(_reap_meanwhile(dsn, done))
    assert await worker.drain() == 1
    done.set()
    assert await reaping == []
    assert await status_of(store, job_id) == "DONE"
