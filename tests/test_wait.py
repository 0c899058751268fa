"""store.wait(): the finished job, as soon as it finishes, woken by a notification."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import asyncpg
import pytest

from pqrun import (
    DatabaseUnavailable,
    Fail,
    JobContext,
    JobNotFound,
    JobStatus,
    PgJobStore,
    Retry,
    WaitTimeout,
    Worker,
)

from .helpers import QUICK, listener_pids, wait_until

# The fallback look of a wait() at its job, made long here: a wait that ends well within
# it was woken by the job's notification.
RECHECK_SECONDS = 120.0


@pytest.fixture(autouse=True)
def slow_recheck(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pqrun._store.waiting.WAIT_RECHECK_SECONDS", RECHECK_SECONDS)


async def now(conn: asyncpg.Connection) -> datetime:
    moment: datetime = await conn.fetchval("SELECT clock_timestamp()")
    return moment


async def test_wait_returns_the_result_when_a_worker_finishes_the_job(store: PgJobStore) -> None:
    async def square(ctx: JobContext) -> int:
        await asyncio.sleep(0.2)
        return int(ctx.payload["n"]) ** 2

    job_id = await store.enqueue("square", {"n": 7})
    worker = Worker(store=store, handlers={"square": square}, **QUICK)
    await worker.start()
    try:
        started = time.monotonic()
        job = await store.wait(job_id, timeout=2 * RECHECK_SECONDS)
        waited = time.monotonic() - started
    finally:
        await worker.stop()
    assert job.status is JobStatus.DONE
    assert job.result == 49
    # Woken by the notification, not by the fallback look every RECHECK_SECONDS.
    assert waited < RECHECK_SECONDS / 2


async def test_many_waiters_share_one_listening_connection(
    dsn: str, store: PgJobStore, conn: asyncpg.Connection
) -> None:
    ids = await store.enqueue_many([{"job_type": "echo", "payload": {"n": n}} for n in range(200)])
    waiting_store = PgJobStore(dsn)
    since = await now(conn)
    try:
        waits = [asyncio.ensure_future(waiting_store.wait(i, timeout=300)) for i in ids]
        await wait_until(lambda: _at_least_one(conn, since), within=30)
        await asyncio.sleep(0.5)  # the other waiters start (a connection each would show)
        assert len(await listener_pids(conn, since)) == 1

        async def echo(ctx: JobContext) -> object:
            return ctx.payload

        await Worker(store=store, handlers={"echo": echo}, concurrency=8, **QUICK).drain()
        jobs = await asyncio.wait_for(asyncio.gather(*waits), timeout=RECHECK_SECONDS / 2)
    finally:
        await waiting_store.close()
    assert [job.result for job in jobs] == [{"n": n} for n in range(200)]


async def _at_least_one(conn: asyncpg.Connection, since: datetime) -> bool:
    return bool(await listener_pids(conn, since))


async def test_wait_sees_failed_cancelled_and_sql_finishes(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    async def refuse(ctx: JobContext) -> None:
        raise Fail("no such account")

    failing = await store.enqueue("refuse")
    waiting = asyncio.ensure_future(store.wait(failing, timeout=30))
    await Worker(store=store, handlers={"refuse": refuse}, **QUICK).drain()
    job = await waiting
    assert job.status is JobStatus.FAILED
    assert "no such account" in (job.last_error or "")

    cancelled = await store.enqueue("nobody_runs_this")
    # Long timeouts: a wait also looks at its job when its timeout is up.
    waiting = asyncio.ensure_future(store.wait(cancelled, timeout=2 * RECHECK_SECONDS))
    await asyncio.sleep(0.2)
    assert await store.cancel(cancelled)
    assert (await asyncio.wait_for(waiting, RECHECK_SECONDS / 2)).status is JobStatus.CANCELLED

    by_sql = await store.enqueue("nobody_runs_this")
    waiting = asyncio.ensure_future(store.wait(by_sql, timeout=2 * RECHECK_SECONDS))
    await asyncio.sleep(0.2)
    await conn.execute("UPDATE jobs SET status = 'DONE', result = '1' WHERE id = $1", by_sql)
    job = await asyncio.wait_for(waiting, RECHECK_SECONDS / 2)
    assert job.status is JobStatus.DONE
    assert job.result == 1


async def test_a_retry_is_not_the_end(store: PgJobStore) -> None:
    async def flaky(ctx: JobContext) -> str:
        if ctx.attempt == 1:
            raise Retry(after=0.1)
        return "second time lucky"

    job_id = await store.enqueue("flaky")
    worker = Worker(store=store, handlers={"flaky": flaky}, **QUICK)
    await worker.start()
    try:
        job = await store.wait(job_id, timeout=30)
    finally:
        await worker.stop()
    assert (job.status, job.attempts, job.result) == (JobStatus.DONE, 2, "second time lucky")


async def test_finished_jobs_return_at_once_and_errors_are_clear(store: PgJobStore) -> None:
    job_id = await store.enqueue("nobody_runs_this")
    await store.cancel(job_id)
    assert (await store.wait(job_id, timeout=0)).status is JobStatus.CANCELLED

    ready = await store.enqueue("nobody_runs_this")
    started = time.monotonic()
    with pytest.raises(WaitTimeout, match=rf"job {ready} \(nobody_runs_this\) is still READY"):
        await store.wait(ready, timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 30  # the job never finishes
    with pytest.raises(JobNotFound, match="no job with id 999999"):
        await store.wait(999_999)
    with pytest.raises(ValueError, match="timeout"):
        await store.wait(ready, timeout=-1)


async def test_wait_inside_a_transaction_is_refused(store: PgJobStore) -> None:
    async with store.transaction():
        job_id = await store.enqueue("nobody_runs_this")
        with pytest.raises(RuntimeError, match=r"inside store\.transaction\(\)"):
            await store.wait(job_id, timeout=1)
    # Inside a plain connection() block it works (on a connection of its own).
    await store.cancel(job_id)
    async with store.connection():
        assert (await store.wait(job_id, timeout=1)).status is JobStatus.CANCELLED


async def test_closing_the_store_ends_waits_without_reconnecting(
    dsn: str, store: PgJobStore, conn: asyncpg.Connection
) -> None:
    job_id = await store.enqueue("nobody_runs_this")
    other = PgJobStore(dsn)
    since = await now(conn)
    waiting = asyncio.ensure_future(other.wait(job_id, timeout=300))

    async def awaited() -> bool:
        return bool(await conn.fetchval("SELECT awaited FROM jobs WHERE id = $1", job_id))

    # The wait listens, and has marked its job awaited: it is waiting, not starting.
    await wait_until(lambda: _at_least_one(conn, since), within=30)
    await wait_until(awaited, within=30)
    await other.close()
    with pytest.raises(DatabaseUnavailable, match="closed while waiting"):
        await asyncio.wait_for(waiting, 60)
    assert not other.started

    async def none_left() -> bool:
        return not await listener_pids(conn, since)

    await wait_until(none_left, within=30)  # a closed connection's backend ends soon after
    await asyncio.sleep(0.5)
    assert not await listener_pids(conn, since)  # and no reconnect brought it back
