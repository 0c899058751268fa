"""Idle workers wake on NOTIFY, sleep until known due times, and survive a lost listener.

Every worker here polls only every 10 s, so a job run sooner than that was found by a
notification or a known due time, not by polling.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest

from pqrun import IdlePollPolicy, JobContext, LoopErrorPolicy, PgJobStore, Worker

from .helpers import status_of, wait_until

SLOW_POLL = IdlePollPolicy(base_seconds=10.0, max_seconds=10.0)


@pytest.fixture
async def started(store: PgJobStore) -> AsyncIterator[tuple[Worker, dict[int, float]]]:
    """A running, idle worker; the dict maps job id -> monotonic time its handler started."""
    starts: dict[int, float] = {}

    async def handler(ctx: JobContext) -> None:
        starts[ctx.job.id] = time.monotonic()

    worker = Worker(
        store=store,
        handlers={"t": handler},
        idle_policy=SLOW_POLL,
        loop_error_policy=LoopErrorPolicy(0.05, 0.2),
        enable_reaper=False,
    )
    await worker.start()
    await asyncio.sleep(0.3)  # past the first poll: idle, waiting 10 s
    try:
        yield worker, starts
    finally:
        await worker.stop()


async def test_plain_sql_insert_wakes_an_idle_worker(
    started: tuple[Worker, dict[int, float]], conn: asyncpg.Connection
) -> None:
    _, starts = started
    inserted = time.monotonic()
    job_id = await conn.fetchval("INSERT INTO jobs (job_type) VALUES ('t') RETURNING id")

    async def ran() -> bool:
        return job_id in starts

    await wait_until(ran, within=3)
    assert starts[job_id] - inserted < 1.0


async def test_delayed_job_starts_when_due_not_at_the_next_poll(
    started: tuple[Worker, dict[int, float]], store: PgJobStore
) -> None:
    _, starts = started
    enqueued = time.monotonic()
    job_id = await store.enqueue("t", run_after=timedelta(seconds=1.5))

    async def ran() -> bool:
        return job_id in starts

    await wait_until(ran, within=5)
    assert 1.4 <= starts[job_id] - enqueued < 3.0


async def test_worker_listens_again_after_losing_its_listen_connection(
    started: tuple[Worker, dict[int, float]], store: PgJobStore, conn: asyncpg.Connection
) -> None:
    _, starts = started

    async def listener_pids() -> list[int]:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND query LIKE 'LISTEN %' AND pid <> pg_backend_pid()"
        )
        return [row["pid"] for row in rows]

    (old_pid,) = await listener_pids()
    await conn.execute("SELECT pg_terminate_backend($1)", old_pid)

    async def listening_again() -> bool:
        pids = await listener_pids()
        return bool(pids) and old_pid not in pids

    await wait_until(listening_again, within=5)
    job_id = await store.enqueue("t")

    async def ran() -> bool:
        return job_id in starts

    await wait_until(ran, within=2)


async def test_retry_wakes_an_idle_worker(
    started: tuple[Worker, dict[int, float]], store: PgJobStore
) -> None:
    _, starts = started
    job_id = await store.enqueue("t", run_after=timedelta(hours=1))
    assert await store.cancel(job_id)
    await asyncio.sleep(0.2)
    assert await store.retry(job_id)

    async def ran() -> bool:
        return job_id in starts

    await wait_until(ran, within=2)
    await wait_until(lambda: _done(store, job_id), within=2)


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
        assert not await worker._hears_itself(deaf)
        assert time.monotonic() - began < 7
    finally:
        listening.terminate()
        await deaf.close()
