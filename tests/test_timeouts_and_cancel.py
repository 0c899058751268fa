"""timeout_seconds is an execution deadline; store.cancel() stops a running handler."""

from __future__ import annotations

import asyncio
import time

from pqrun import JobContext, JobStatus, PgJobStore, Worker

from .helpers import QUICK, status_of, wait_until


async def test_a_handler_past_its_timeout_is_cancelled_and_the_job_retried(
    store: PgJobStore,
) -> None:
    cancelled = False

    async def slow(ctx: JobContext) -> str:
        nonlocal cancelled
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled = True
            raise
        return "never"

    job_id = await store.enqueue("slow", timeout_seconds=1, max_attempts=2)
    began = time.monotonic()
    await Worker(store=store, handlers={"slow": slow}, **QUICK).drain()
    assert 0.9 < time.monotonic() - began < 5
    assert cancelled
    job = await store.get_job(job_id)
    assert job is not None
    assert job.status is JobStatus.READY  # one attempt left, after the backoff
    assert job.last_error is not None
    assert job.last_error.startswith(
        "timed out: the handler ran past the job's timeout_seconds (1 s)"
    )


async def test_a_handlers_own_timeout_error_is_an_ordinary_failure(store: PgJobStore) -> None:
    async def times_out_itself(ctx: JobContext) -> None:
        await asyncio.wait_for(asyncio.sleep(1), timeout=0.01)

    job_id = await store.enqueue("t", timeout_seconds=30)
    await Worker(store=store, handlers={"t": times_out_itself}, **QUICK).drain()
    job = await store.get_job(job_id)
    assert job is not None
    assert job.last_error is not None
    assert job.last_error.startswith("TimeoutError")


async def test_cancel_stops_a_running_handler_and_the_worker_goes_on(store: PgJobStore) -> None:
    started = asyncio.Event()
    stopped = asyncio.Event()

    async def long_running(ctx: JobContext) -> str:
        if ctx.job.payload.get("long"):
            started.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                stopped.set()
                raise
        return "ran"

    worker = Worker(store=store, handlers={"t": long_running}, concurrency=1, **QUICK)
    long_job = await store.enqueue("t", {"long": True})
    await worker.start()
    try:
        await asyncio.wait_for(started.wait(), 5)
        assert await store.cancel(long_job)
        await asyncio.wait_for(stopped.wait(), 5)  # told through NOTIFY, not at the end
        # The only slot is free again and runs the next job.
        next_job = await store.enqueue("t")
        await wait_until(lambda: _done(store, next_job))
    finally:
        await worker.stop()
    job = await store.get_job(long_job)
    assert job is not None
    assert (job.status, job.result) == (JobStatus.CANCELLED, None)


async def _done(store: PgJobStore, job_id: int) -> bool:
    return await status_of(store, job_id) == "DONE"


async def test_cancelling_a_ready_job_sends_no_cancel_notice(
    store: PgJobStore,
) -> None:
    heard: list[str] = []
    listener = await store.listen(heard.append)
    try:
        job_id = await store.enqueue("t")
        assert await store.cancel(job_id)
        await listener.execute("SELECT 1")
    finally:
        listener.terminate()
    assert [p for p in heard if p.startswith("cancel:")] == []


async def test_no_timeout_means_no_deadline(store: PgJobStore) -> None:
    async def a_while(ctx: JobContext) -> str:
        await asyncio.sleep(0.3)
        return "finished"

    job_id = await store.enqueue("t")
    await Worker(store=store, handlers={"t": a_while}, **QUICK).drain()
    assert await status_of(store, job_id) == "DONE"
