"""Failure modes found in review, each reproduced against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import asyncpg
import pytest

from pqrun import (
    DatabaseUnavailable,
    IdlePollPolicy,
    JobContext,
    JobStatus,
    PgJobStore,
    Retry,
    Worker,
)
from pqrun._worker.loops import OutageLog as _OutageLog
from pqrun._worker.outcome_writer import OutcomeWriter

from .helpers import QUICK, picked, status_of, wait_until


async def test_a_retried_jobs_old_run_cannot_complete_it(store: PgJobStore) -> None:
    job_id = await store.enqueue("t")
    first = await picked(store, "w")
    assert await store.cancel(job_id)
    assert await store.retry(job_id)
    second = await picked(store, "w")  # same worker, same attempt number as the first
    assert (second.locked_by, second.attempts) == (first.locked_by, first.attempts)
    assert second.lease_id != first.lease_id
    assert not await store.mark_done(first, "stale")
    assert await store.mark_error(first, "stale") is None
    assert await store.release([first], "stale") == []
    assert await store.mark_done(second, "fresh")
    job = await store.get_job(job_id)
    assert job is not None
    assert (job.status, job.result) == (JobStatus.DONE, "fresh")


async def test_statements_time_out_instead_of_hanging(
    dsn: str, store: PgJobStore, conn: asyncpg.Connection
) -> None:
    job_id = await store.enqueue("t")
    impatient = PgJobStore(dsn, statement_timeout=0.5)
    try:
        async with conn.transaction():
            await conn.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", job_id)
            began = time.monotonic()
            with pytest.raises(DatabaseUnavailable):
                # Without the statement_timeout (0.5 s) it would wait for this lock for ever.
                await asyncio.wait_for(impatient.cancel(job_id), 60)
            assert time.monotonic() - began < 30
    finally:
        await impatient.close()


async def test_store_calls_inside_connection_block_reuse_it(dsn: str) -> None:
    store = PgJobStore(dsn, max_size=1)
    try:
        async with store.connection() as conn:
            await conn.execute("SELECT 1")
            job_id = await asyncio.wait_for(store.enqueue("t"), timeout=5)
            assert await asyncio.wait_for(store.get_job(job_id), timeout=5) is not None
    finally:
        await store.close()


async def test_your_own_errors_in_a_block_are_not_renamed(store: PgJobStore) -> None:
    async def raise_in_block() -> None:
        async with store.transaction():
            raise TimeoutError("mine")

    with pytest.raises(TimeoutError, match="mine"):
        await raise_in_block()


async def test_a_task_that_outlives_a_transaction_does_not_use_its_connection(
    store: PgJobStore,
) -> None:
    block_ended = asyncio.Event()
    children: list[asyncio.Task[int]] = []

    async def later() -> int:
        await block_ended.wait()
        return await store.enqueue("after the block")

    async def enqueue_then_roll_back() -> None:
        async with store.transaction():
            children.append(asyncio.create_task(later()))
            await asyncio.wait_for(store.enqueue("inside"), timeout=5)  # joins, in 3.11 too
            raise RuntimeError("roll back")

    with pytest.raises(RuntimeError, match="roll back"):
        await enqueue_then_roll_back()
    block_ended.set()
    job_id = await asyncio.wait_for(children[0], timeout=5)
    assert await store.get_job(job_id) is not None
    assert [j.job_type for j in await store.list_jobs()] == ["after the block"]


async def test_an_error_text_the_database_refuses_is_still_recorded(store: PgJobStore) -> None:
    async def handler(ctx: JobContext) -> None:
        raise ValueError("bad file name \udcff and a \x00")

    job_id = await store.enqueue("t")
    await Worker(store=store, handlers={"t": handler}, **QUICK).drain()
    job = await store.get_job(job_id)
    assert job is not None
    assert job.status is JobStatus.READY
    assert job.last_error is not None
    assert "\\udcff" in job.last_error


async def test_a_job_picked_again_by_the_same_worker_is_run_and_tracked_twice(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    first_run = asyncio.Event()
    let_first_finish = asyncio.Event()
    runs = 0

    async def handler(ctx: JobContext) -> str:
        nonlocal runs
        runs += 1
        if runs == 1:
            first_run.set()
            await let_first_finish.wait()
            return "first"
        return "second"

    worker = Worker(store=store, handlers={"t": handler}, concurrency=2, **QUICK)
    job_id = await store.enqueue("t")
    await worker.start()
    try:
        await asyncio.wait_for(first_run.wait(), 30)
        # Taken back as the reaper would, behind the worker's back. (Not with
        # reap_stale(0): the worker's first heartbeat may already list the claim.)
        taken_back = await conn.fetchval(
            "UPDATE jobs SET status = 'READY', run_after = now(), locked_at = NULL, "
            "locked_by = NULL WHERE id = $1 AND status = 'RUNNING' RETURNING id",
            job_id,
        )
        assert taken_back == job_id
        await wait_until(lambda: _is(store, job_id, "DONE"))
        let_first_finish.set()
        await asyncio.sleep(0.2)
        job = await store.get_job(job_id)
        assert job is not None
        assert job.result == "second"  # the first run's late answer was ignored
        another = await store.enqueue("t")  # the worker is still healthy
        await wait_until(lambda: _is(store, another, "DONE"))
    finally:
        await worker.stop()
    assert runs == 3


async def _is(store: PgJobStore, job_id: int, status: str) -> bool:
    return await status_of(store, job_id) == status


async def test_shutdown_with_grace_equal_to_timeout_still_puts_jobs_back(
    store: PgJobStore,
) -> None:
    started = asyncio.Event()

    async def endless(ctx: JobContext) -> None:
        started.set()
        await asyncio.sleep(3600)

    job_id = await store.enqueue("t")
    # Some of the timeout is kept back from the grace (1 s of 4 s) to put the job back:
    # time enough for one UPDATE on a loaded machine.
    worker = Worker(
        store=store,
        handlers={"t": endless},
        shutdown_grace=4,
        shutdown_timeout=4,
        **QUICK,
    )
    await worker.start()
    await asyncio.wait_for(started.wait(), 30)
    began = time.monotonic()
    await asyncio.wait_for(worker.stop(), 60)
    assert time.monotonic() - began < 4 + 6  # the timeout, and room for a busy machine
    assert await status_of(store, job_id) == "READY"


async def test_run_returns_in_time_when_a_handler_holds_a_connection_and_ignores_cancel(
    dsn: str, store: PgJobStore
) -> None:
    started = asyncio.Event()

    async def stubborn(ctx: JobContext) -> None:
        async with ctx.store.transaction() as tx:
            started.set()
            while True:
                try:
                    await tx.execute("SELECT pg_sleep(0.05)")
                except asyncio.CancelledError:
                    continue

    own = PgJobStore(dsn)
    worker = Worker(
        store=own,
        handlers={"t": stubborn},
        shutdown_grace=0.2,
        shutdown_timeout=1,
        **QUICK,
    )
    await store.enqueue("t")
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 30)
    began = time.monotonic()
    worker.request_stop()
    await asyncio.wait_for(running, timeout=60)  # store.close() is bounded too
    # About 2 s: the shutdown_timeout (1 s), then 1 s for closing the store while a
    # handler holds a connection (10 s when none does).
    assert time.monotonic() - began < 8


async def test_stop_requested_while_starting_is_not_lost(
    store: PgJobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def noop(ctx: JobContext) -> None:
        return None

    real_start = store.start

    async def slow_start() -> None:
        await asyncio.sleep(0.5)  # a slow connect: the stop comes meanwhile
        await real_start()

    monkeypatch.setattr(store, "start", slow_start)
    worker = Worker(store=store, handlers={"t": noop}, **QUICK)
    asyncio.get_running_loop().call_later(0.1, worker.request_stop)
    await asyncio.wait_for(worker.run(), timeout=60)
    assert not worker.is_running


async def test_a_plain_function_is_not_put_back_while_its_thread_runs(store: PgJobStore) -> None:
    started = threading.Event()

    def blocking(ctx: JobContext) -> str:
        started.set()
        time.sleep(1.0)
        return "finished in its thread"

    job_id = await store.enqueue("t")
    worker = Worker(
        store=store,
        handlers={"t": blocking},
        shutdown_grace=0.1,
        shutdown_timeout=15,
        **QUICK,
    )
    await worker.start()
    # Started, not only RUNNING: a job in the prefetch buffer is RUNNING too.
    await asyncio.wait_for(asyncio.to_thread(started.wait, 30), 60)
    assert started.is_set()
    await worker.stop()
    job = await store.get_job(job_id)
    assert job is not None
    assert (job.status, job.result) == (JobStatus.DONE, "finished in its thread")


async def test_a_failing_policy_stops_the_worker_loudly(
    store: PgJobStore, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(IdlePollPolicy):
        def next_sleep(self, consecutive_idle: int) -> float:
            raise ZeroDivisionError("policy bug")

    async def noop(ctx: JobContext) -> None:
        return None

    worker = Worker(store=store, handlers={"t": noop}, idle_policy=Broken(), enable_reaper=False)
    # run() ends with the error, so a worker process exits with a failure.
    with pytest.raises(ZeroDivisionError, match="policy bug"):
        await asyncio.wait_for(worker.run(), timeout=60)
    assert any("failed; stopping the worker" in r.getMessage() for r in caplog.records)


def test_each_outage_is_logged_when_it_starts(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pqrun")
    outage = _OutageLog("w")
    outage.failure("reaper", "reaping", OSError("blip"))
    outage.recovered("reaper")
    outage.failure("fetch", "claiming", OSError("down"))
    outage.failure("fetch", "claiming", OSError("down"))
    outage.recovered("fetch")
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "database error" in m]) == 2
    assert len([m for m in messages if "works again after" in m]) == 2


async def test_enqueue_of_a_duplicate_does_not_lock_the_active_job(
    dsn: str, store: PgJobStore
) -> None:
    job_id = await store.enqueue("t", dedupe_key="k")
    caller = await asyncpg.connect(dsn)
    try:
        async with caller.transaction():
            assert await store.enqueue("t", dedupe_key="k", conn=caller) == job_id
            # The caller's transaction is still open: the job can be claimed all the same
            # (were it locked, the claim would skip it, or wait for ever).
            job = await asyncio.wait_for(store.pickup("w"), timeout=30)
            assert job is not None
            assert job.id == job_id
    finally:
        await caller.close()


def test_a_store_can_be_used_from_a_second_event_loop(dsn: str) -> None:
    store = PgJobStore(dsn)
    asyncio.run(store.start())

    async def use() -> int:
        try:
            return await store.enqueue("t")
        finally:
            await store.close()

    assert asyncio.run(use()) > 0


async def test_cancelling_drain_returns_and_gives_jobs_back(store: PgJobStore) -> None:
    started = asyncio.Event()

    async def endless(ctx: JobContext) -> None:
        started.set()
        await asyncio.sleep(3600)

    job_id = await store.enqueue("t")
    draining = asyncio.create_task(Worker(store=store, handlers={"t": endless}, **QUICK).drain())
    await asyncio.wait_for(started.wait(), 30)
    draining.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(draining, timeout=60)
    assert await status_of(store, job_id) == "READY"


class FreezableProxy:
    """A TCP proxy to PostgreSQL that can stop forwarding without closing anything:
    to the client, a network partition."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.frozen = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.port = 0
        self.upstreams: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.upstreams.append(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                if self.frozen.is_set():
                    await asyncio.Event().wait()  # swallow everything from now on
                dst.write(data)
                await dst.drain()

        await asyncio.gather(
            pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True
        )

    def close(self) -> None:
        """End the partition for PostgreSQL: its backends see their clients go away and
        give up their transactions (and locks)."""
        if self.server is not None:
            self.server.close()
        for upstream in self.upstreams:
            upstream.transport.abort()


async def test_stop_returns_in_time_during_a_network_partition(dsn: str, store: PgJobStore) -> None:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    proxy = FreezableProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    through_proxy = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
    cut_off = PgJobStore(through_proxy, statement_timeout=60, connect_timeout=2)
    finished = asyncio.Event()

    async def handler(ctx: JobContext) -> str:
        proxy.frozen.set()  # the network goes away while this job runs
        finished.set()
        return "done, but nobody will hear it"

    worker = Worker(
        store=cut_off,
        handlers={"t": handler},
        shutdown_grace=0.5,
        shutdown_timeout=2,
        **QUICK,
    )
    job_id = await store.enqueue("t")
    try:
        await worker.start()
        await asyncio.wait_for(finished.wait(), 30)
        await asyncio.sleep(0.3)  # the outcome writer is now stuck on the dead connection
        began = time.monotonic()
        # Statements on the dead connection would wait for their 60 s statement_timeout.
        await asyncio.wait_for(worker.stop(), timeout=120)
        assert time.monotonic() - began < 2 + 10  # the shutdown_timeout, and room
    finally:
        proxy.close()
        if cut_off._pool is not None:
            cut_off._pool.terminate()
    assert await status_of(store, job_id) == "RUNNING"  # left for the reaper, not lost


async def test_a_result_too_deep_to_encode_fails_that_job_only(store: PgJobStore) -> None:
    async def deep(ctx: JobContext) -> Any:
        value: Any = []
        for _ in range(5000):
            value = [value]
        return value

    async def fine(ctx: JobContext) -> str:
        return "fine"

    bad = await store.enqueue("deep")
    good = await store.enqueue("fine")
    assert await Worker(store=store, handlers={"deep": deep, "fine": fine}, **QUICK).drain() == 2
    failed = await store.get_job(bad)
    assert failed is not None
    assert failed.status is JobStatus.FAILED
    assert "RecursionError" in (failed.last_error or "")
    assert await status_of(store, good) == "DONE"


async def test_drain_claims_a_retry_written_during_its_last_claim(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    # Many READY jobs of a type this worker does not handle make each empty claim slow,
    # so the retry's write lands while the claim that found nothing is still running.
    await conn.execute(
        "INSERT INTO jobs (job_type) SELECT 'someone_elses' FROM generate_series(1, 100000)"
    )
    await conn.execute("ANALYZE jobs")
    runs = 0

    async def twice(ctx: JobContext) -> str:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise Retry()
        return "second run"

    job_id = await store.enqueue("twice")
    assert await Worker(store=store, handlers={"twice": twice}, **QUICK).drain() == 2
    assert runs == 2
    assert await status_of(store, job_id) == "DONE"


async def test_drain_raises_and_gives_jobs_back_when_a_slot_fails(
    store: PgJobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fake: no real database makes pqrun's own bookkeeping fail on cue.
    async def noop(ctx: JobContext) -> None:
        return None

    worker = Worker(store=store, handlers={"t": noop}, **QUICK)
    ids = await store.enqueue_many([{"job_type": "t"}] * 300)
    original = OutcomeWriter.submit
    calls = 0

    async def broken_submit(self: OutcomeWriter, outcome: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 50:
            raise RuntimeError("bookkeeping bug")
        await original(self, outcome)

    monkeypatch.setattr(OutcomeWriter, "submit", broken_submit)
    with pytest.raises(RuntimeError, match="bookkeeping bug"):
        await asyncio.wait_for(worker.drain(), timeout=30)
    statuses = {await status_of(store, job_id) for job_id in ids}
    assert statuses <= {"DONE", "READY", "RUNNING"}
    running = await store.list_jobs(status="RUNNING", limit=1000)
    assert len(running) <= 1  # only the job whose outcome was lost: the reaper's


async def test_a_schema_with_a_long_name_still_notifies(dsn: str) -> None:
    schema = "s" * 60  # 'pqrun:' + 60 bytes is over PostgreSQL's 63-byte channel limit
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE; CREATE SCHEMA "{schema}"')
    long_store = PgJobStore(dsn, server_settings={"search_path": f'"{schema}"'})
    try:
        await long_store.setup()
        assert len(long_store.channel.encode()) <= 63
        heard: list[str] = []
        listener = await long_store.listen(heard.append)
        job_id = await long_store.enqueue("t")

        async def heard_it() -> bool:
            return bool(heard)

        await wait_until(heard_it, within=30)
        await asyncio.sleep(0.2)  # time for a second notification, were there one
        listener.terminate()
        assert heard == [f"jobs:1:{job_id}:{job_id}::t"]
    finally:
        await long_store.close()
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()
