"""timeout_seconds is an execution deadline; store.cancel() stops a running handler."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

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
    await asyncio.wait_for(Worker(store=store, handlers={"slow": slow}, **QUICK).drain(), 60)
    # Cancelled at its timeout (1 s), not at the end of its 30 s sleep.
    assert 0.9 < time.monotonic() - began < 20
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

    # A heartbeat every 100 s: only the NOTIFY can tell it within 30 s.
    worker = Worker(
        store=store,
        handlers={"t": long_running},
        concurrency=1,
        default_stale_after=timedelta(seconds=600),
        **QUICK,
    )
    long_job = await store.enqueue("t", {"long": True})
    await worker.start()
    try:
        await asyncio.wait_for(started.wait(), 30)
        assert await store.cancel(long_job)
        await asyncio.wait_for(stopped.wait(), 30)  # told through NOTIFY, not at the end
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


async def test_a_swallowed_cancel_does_not_cost_the_slot(store: PgJobStore) -> None:
    started: dict[str, asyncio.Event] = {"stubborn": asyncio.Event(), "long": asyncio.Event()}
    ran: list[str] = []

    async def handler(ctx: JobContext) -> str:
        kind = ctx.job.payload["kind"]
        ran.append(kind)
        if kind == "stubborn":
            started["stubborn"].set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                return "swallowed the cancel"  # a badly behaved handler
        if kind == "long":
            started["long"].set()
            await asyncio.sleep(60)
        return "ran"

    worker = Worker(store=store, handlers={"t": handler}, concurrency=1, prefetch=0, **QUICK)
    stubborn = await store.enqueue("t", {"kind": "stubborn"})
    await worker.start()
    try:
        await asyncio.wait_for(started["stubborn"].wait(), 30)
        assert await store.cancel(stubborn)
        long_job = await store.enqueue("t", {"kind": "long"})
        await asyncio.wait_for(started["long"].wait(), 30)
        assert await store.cancel(long_job)  # the second cancel on the same slot
        last = await store.enqueue("t", {"kind": "quick"})
        await wait_until(lambda: _done(store, last))  # the slot still works
    finally:
        await worker.stop()
    assert ran == ["stubborn", "long", "quick"]


async def test_a_cancelled_job_waiting_in_the_buffer_never_starts(store: PgJobStore) -> None:
    started = asyncio.Event()
    ran: list[int] = []

    async def handler(ctx: JobContext) -> None:
        ran.append(ctx.job.id)
        if ctx.job.payload.get("hold"):
            started.set()
            await asyncio.sleep(3.0)  # while the cancel notice reaches the worker

    worker = Worker(store=store, handlers={"t": handler}, concurrency=1, **QUICK)
    # Fast jobs first, so the worker measures them and claims ahead of its one slot.
    warmup = await store.enqueue_many([{"job_type": "t"}] * 20)
    await worker.start()
    try:
        await wait_until(lambda: _done(store, warmup[-1]))
        held, waiting = await store.enqueue_many(
            [{"job_type": "t", "payload": {"hold": True}}, {"job_type": "t"}]
        )
        await asyncio.wait_for(started.wait(), 30)
        job = await store.get_job(waiting)
        assert job is not None
        assert job.status is JobStatus.RUNNING  # claimed into the buffer, not started
        assert await store.cancel(waiting)
        await wait_until(lambda: _done(store, held))
        await asyncio.sleep(0.2)
    finally:
        await worker.stop()
    assert waiting not in ran
    assert await status_of(store, waiting) == "CANCELLED"


async def test_a_worker_that_does_not_listen_stops_a_cancelled_handler_at_its_heartbeat(
    store: PgJobStore,
) -> None:
    started = asyncio.Event()
    stopped = asyncio.Event()

    async def long_running(ctx: JobContext) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            stopped.set()
            raise

    worker = Worker(
        store=store,
        handlers={"t": long_running},
        listen=False,
        default_stale_after=timedelta(seconds=1.2),  # a heartbeat every 0.2 s
        **QUICK,
    )
    job_id = await store.enqueue("t")
    await worker.start()
    try:
        await asyncio.wait_for(started.wait(), 30)
        assert await store.cancel(job_id)
        await asyncio.wait_for(stopped.wait(), 30)  # the handler would sleep 60 s
    finally:
        await worker.stop()
    assert await status_of(store, job_id) == "CANCELLED"
