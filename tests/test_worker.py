"""The Worker against a real PostgreSQL: handlers, outcomes, policies, shutdown."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest

from pqrun import (
    BackoffPolicy,
    DatabaseUnavailable,
    Fail,
    IdlePollPolicy,
    JobContext,
    JobStatus,
    LoopErrorPolicy,
    PgJobStore,
    Retry,
    Snooze,
    UnknownJobType,
    Worker,
)

from .helpers import counts, status_of, wait_until

FAST_ERRORS = LoopErrorPolicy(base_seconds=0.01, max_seconds=0.05)


def make_worker(store: PgJobStore, handlers: dict[str, Any], **kwargs: Any) -> Worker:
    kwargs.setdefault("idle_policy", IdlePollPolicy(base_seconds=0.02, max_seconds=0.05))
    kwargs.setdefault("loop_error_policy", FAST_ERRORS)
    kwargs.setdefault("enable_reaper", False)
    return Worker(store=store, handlers=handlers, **kwargs)


async def test_handler_result_is_stored(store: PgJobStore) -> None:
    seen: list[JobContext] = []

    async def summarize(ctx: JobContext) -> dict[str, Any]:
        seen.append(ctx)
        return {"summary_id": 123, "conversation": ctx.job.payload["conversation_id"]}

    worker = make_worker(store, {"summarize": summarize}, worker_id="w-1")
    job_id = await store.enqueue("summarize", {"conversation_id": 7})
    assert await worker.drain() == 1
    job = await store.get_job(job_id)
    assert job is not None
    assert job.status is JobStatus.DONE
    assert job.result == {"summary_id": 123, "conversation": 7}
    assert job.duration_ms is not None
    assert job.finished_at is not None
    assert job.locked_by == "w-1"
    (ctx,) = seen
    assert (ctx.store, ctx.worker_id, ctx.job.id, ctx.attempt) == (store, "w-1", job_id, 1)


@pytest.mark.parametrize("value", [[1, "two"], "text", 42, 1.5, True, None])
async def test_any_json_value_is_a_result(store: PgJobStore, value: Any) -> None:
    async def handler(ctx: JobContext) -> Any:
        return value

    job_id = await store.enqueue("t")
    await make_worker(store, {"t": handler}).drain()
    job = await store.get_job(job_id)
    assert job is not None
    assert (job.status, job.result) == (JobStatus.DONE, value)


async def test_plain_function_runs_in_a_thread(store: PgJobStore) -> None:
    loop_thread = threading.get_ident()
    threads: list[int] = []

    def blocking(ctx: JobContext) -> dict[str, int]:
        threads.append(threading.get_ident())
        time.sleep(0.05)  # would stall every other job if it ran on the event loop
        return {"n": ctx.job.payload["n"]}

    ids = [await store.enqueue("blocking", {"n": n}) for n in range(4)]
    await make_worker(store, {"blocking": blocking}, concurrency=4).drain()
    assert threads
    assert loop_thread not in threads
    for n, job_id in enumerate(ids):
        assert (await store.get_job(job_id)).result == {"n": n}  # type: ignore[union-attr]


async def test_handler_chains_are_drained_too(store: PgJobStore) -> None:
    async def summarize(ctx: JobContext) -> dict[str, int]:
        await ctx.store.enqueue("embed", {"summary_id": 5})
        return {"summary_id": 5}

    async def embed(ctx: JobContext) -> str:
        return f"embedded {ctx.job.payload['summary_id']}"

    await store.enqueue("summarize")
    assert await make_worker(store, {"summarize": summarize, "embed": embed}).drain() == 2
    (embedded,) = await store.list_jobs(job_type="embed")
    assert (embedded.status, embedded.result) == (JobStatus.DONE, "embedded 5")


async def test_exception_retries_after_backoff_then_fails(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    runs = 0

    async def flaky(ctx: JobContext) -> None:
        nonlocal runs
        runs += 1
        raise ValueError(f"boom {runs}")

    worker = make_worker(store, {"flaky": flaky})
    job_id = await store.enqueue("flaky", max_attempts=2)
    await worker.drain()
    row = await conn.fetchrow(
        "SELECT status, attempts, run_after - updated_at AS delay, last_error FROM jobs "
        "WHERE id = $1",
        job_id,
    )
    assert row is not None
    assert (row["status"], row["attempts"]) == ("READY", 1)
    assert row["delay"] == BackoffPolicy().retry_delay(1) == timedelta(minutes=1)
    assert row["last_error"].startswith("ValueError: boom 1\n")
    assert "in flaky" in row["last_error"]  # the end of the traceback names the handler
    await conn.execute("UPDATE jobs SET run_after = now() WHERE id = $1", job_id)
    await worker.drain()
    job = await store.get_job(job_id)
    assert job is not None
    assert (job.status, job.attempts, runs) == (JobStatus.FAILED, 2, 2)
    assert job.last_error is not None
    assert job.last_error.startswith("ValueError: boom 2")


async def test_last_error_keeps_the_end_of_a_long_traceback(store: PgJobStore) -> None:
    def dive(depth: int) -> None:
        # Each level re-raises with its own context, so no frames fold into "repeated".
        if depth == 0:
            raise KeyError("the bottom")
        try:
            dive(depth - 1)
        except KeyError as exc:
            if depth == 200:
                raise
            raise KeyError("the bottom") from exc

    async def deep(ctx: JobContext) -> None:
        dive(200)

    job_id = await store.enqueue("deep")
    await make_worker(store, {"deep": deep}).drain()
    job = await store.get_job(job_id)
    assert job is not None
    assert job.last_error is not None
    assert job.last_error.startswith("KeyError: 'the bottom'")
    assert len(job.last_error) <= 8000
    assert job.last_error.rstrip().endswith("KeyError: 'the bottom'")  # the end survived
    assert "\n...\n" in job.last_error  # the start was cut


async def test_retry_and_fail_steer_the_job(store: PgJobStore, conn: asyncpg.Connection) -> None:
    async def later(ctx: JobContext) -> None:
        raise Retry(after=timedelta(seconds=90))

    async def never(ctx: JobContext) -> None:
        raise Fail("the account is closed")

    retried = await store.enqueue("later")
    failed = await store.enqueue("never", max_attempts=10)
    await make_worker(store, {"later": later, "never": never}).drain()
    delay = await conn.fetchval("SELECT run_after - updated_at FROM jobs WHERE id = $1", retried)
    assert delay == timedelta(seconds=90)
    job = await store.get_job(failed)
    assert job is not None
    assert (job.status, job.attempts, job.last_error) == (
        JobStatus.FAILED,
        1,
        "Fail: the account is closed",
    )


async def test_retry_with_no_delay_runs_again_in_the_same_drain(store: PgJobStore) -> None:
    runs = 0

    async def twice(ctx: JobContext) -> int:
        nonlocal runs
        runs += 1
        if ctx.attempt == 1:
            raise Retry()
        return ctx.attempt

    job_id = await store.enqueue("twice")
    await make_worker(store, {"twice": twice}).drain()
    assert runs == 2
    assert (await store.get_job(job_id)).result == 2  # type: ignore[union-attr]


async def test_unserializable_result_fails_without_running_again(store: PgJobStore) -> None:
    runs = 0

    async def returns_datetime(ctx: JobContext) -> dict[str, Any]:
        nonlocal runs
        runs += 1
        return {"at": datetime.now()}

    job_id = await store.enqueue("t", max_attempts=5)
    await make_worker(store, {"t": returns_datetime}).drain()
    job = await store.get_job(job_id)
    assert job is not None
    assert job.status is JobStatus.FAILED
    assert runs == 1
    assert job.last_error is not None
    assert "not JSON-serializable" in job.last_error
    assert "datetime" in job.last_error


async def test_result_the_database_refuses_fails_the_job(store: PgJobStore) -> None:
    async def nul(ctx: JobContext) -> str:
        return "a\x00b"  # valid JSON, but jsonb refuses \u0000

    job_id = await store.enqueue("t")
    await make_worker(store, {"t": nul}).drain()
    job = await store.get_job(job_id)
    assert job is not None
    assert job.status is JobStatus.FAILED
    assert "could not be stored" in (job.last_error or "")


async def test_failed_completion_write_is_retried_not_rerun(
    store: PgJobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fake only for the failure: a real database cannot be made to fail one write on cue.
    runs = 0
    failures_left = 3
    real_mark_done_batch = store.mark_done_batch

    async def flaky_mark_done_batch(*args: Any, **kwargs: Any) -> set[tuple[int, int | None]]:
        nonlocal failures_left
        if failures_left:
            failures_left -= 1
            raise DatabaseUnavailable("connection reset (simulated)")
        return await real_mark_done_batch(*args, **kwargs)

    monkeypatch.setattr(store, "mark_done_batch", flaky_mark_done_batch)

    async def handler(ctx: JobContext) -> str:
        nonlocal runs
        runs += 1
        return "ok"

    job_id = await store.enqueue("t")
    await make_worker(store, {"t": handler}).drain()
    job = await store.get_job(job_id)
    assert job is not None
    assert (job.status, job.attempts, job.result, runs) == (JobStatus.DONE, 1, "ok", 1)


async def test_unhandled_job_type_stays_ready(store: PgJobStore) -> None:
    async def known(ctx: JobContext) -> None:
        return None

    mine = await store.enqueue("known")
    theirs = await store.enqueue("new_type_from_next_release")
    assert await make_worker(store, {"known": known}).drain() == 1
    assert await status_of(store, mine) == "DONE"
    assert await status_of(store, theirs) == "READY"
    assert [j.id for j in await store.list_jobs(status="READY")] == [theirs]


async def test_late_answer_after_cancel_is_logged_and_ignored(
    store: PgJobStore, caplog: pytest.LogCaptureFixture
) -> None:
    started = asyncio.Event()
    finish = asyncio.Event()

    async def slow(ctx: JobContext) -> str:
        started.set()
        await finish.wait()
        raise RuntimeError("fails after being cancelled")

    job_id = await store.enqueue("slow")
    worker = make_worker(store, {"slow": slow})
    drained = asyncio.create_task(worker.drain())
    await asyncio.wait_for(started.wait(), 30)
    assert await store.cancel(job_id)
    finish.set()
    await drained
    assert await status_of(store, job_id) == "CANCELLED"
    assert any("no longer owns the job" in r.getMessage() for r in caplog.records)


async def test_idle_poll_policy_base_interval_is_used(store: PgJobStore) -> None:
    calls: list[tuple[int, float]] = []

    class Recording(IdlePollPolicy):
        def next_sleep(self, consecutive_idle: int) -> float:
            seconds = super().next_sleep(consecutive_idle)
            calls.append((consecutive_idle, seconds))
            return seconds

    async def handler(ctx: JobContext) -> None:
        return None

    # No LISTEN: only polling finds the job.
    worker = make_worker(
        store,
        {"t": handler},
        idle_policy=Recording(base_seconds=0.05, max_seconds=0.2),
        listen=False,
    )
    await worker.start()
    try:
        # 12 empty polls: uncapped, the next sleep would be 0.05 * 2**11 = 102 s.
        await wait_until(lambda: _true(len(calls) >= 12), within=60)
        job_id = await store.enqueue("t")
        # Found by a poll at most 0.2 s away (a busy machine may take longer, never 100 s).
        await wait_until(lambda: _is_done(store, job_id), within=30)
    finally:
        await worker.stop()
    assert calls[0] == (1, 0.05)
    assert calls[1] == (2, 0.1)
    assert max(s for _, s in calls) == 0.2
    assert [n for n, _ in calls[:12]] == list(range(1, 13))


async def _true(value: bool) -> bool:
    return value


async def _is_done(store: PgJobStore, job_id: int) -> bool:
    return await status_of(store, job_id) == "DONE"


async def test_database_errors_back_off_and_log_once_per_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sleeps: list[int] = []

    asked_at: list[float] = []

    class Recording(LoopErrorPolicy):
        def next_sleep(self, consecutive_errors: int) -> float:
            sleeps.append(consecutive_errors)
            asked_at.append(time.monotonic())
            return super().next_sleep(consecutive_errors)

    async def handler(ctx: JobContext) -> None:
        return None

    dead = PgJobStore("postgresql://postgres@127.0.0.1:1/none", connect_timeout=0.5)
    worker = Worker(
        store=dead, handlers={"t": handler}, loop_error_policy=Recording(), listen=False
    )
    caplog.set_level(logging.INFO, logger="pqrun")
    await worker.start()
    try:
        await wait_until(lambda: _true(len(sleeps) >= 3), within=60)
    finally:
        await worker.stop()
    # Default policy: 0.5 s, 1 s, 2 s ... between attempts, never a busy loop.
    assert sleeps == list(range(1, len(sleeps) + 1))
    assert asked_at[1] - asked_at[0] >= 0.45, asked_at
    assert asked_at[2] - asked_at[1] >= 0.95, asked_at
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "127.0.0.1:1" in errors[0].getMessage()


async def test_idle_worker_stops_at_once(store: PgJobStore) -> None:
    async def handler(ctx: JobContext) -> None:
        return None

    idle = asyncio.Event()

    class Recording(IdlePollPolicy):
        def next_sleep(self, consecutive_idle: int) -> float:
            idle.set()
            return super().next_sleep(consecutive_idle)

    # Every sleep of the worker is long: an idle poll an hour, a heartbeat every 100 s,
    # a LISTEN probe every 30 s. Stopping waits for none of them: it wakes them all.
    worker = make_worker(
        store,
        {"t": handler},
        idle_policy=Recording(3600.0, 3600.0),
        default_stale_after=timedelta(seconds=600),
    )
    await worker.start()
    await asyncio.wait_for(idle.wait(), 30)
    began = time.monotonic()
    await asyncio.wait_for(worker.stop(), 60)
    # A loop that did not wake would be waited for 5 s, then cancelled. A stop that wakes
    # them takes well under 0.5 s, on a loaded machine too: 4 s is room enough.
    assert time.monotonic() - began < 4
    assert not worker.is_running


async def test_shutdown_lets_running_jobs_finish_within_grace(store: PgJobStore) -> None:
    started = asyncio.Event()

    async def short(ctx: JobContext) -> str:
        started.set()
        await asyncio.sleep(0.3)
        return "finished"

    job_id = await store.enqueue("short")
    worker = make_worker(store, {"short": short}, shutdown_grace=5, shutdown_timeout=10)
    await worker.start()
    await asyncio.wait_for(started.wait(), 30)
    await worker.stop()
    assert await status_of(store, job_id) == "DONE"


async def test_shutdown_puts_unfinished_jobs_back_at_once(store: PgJobStore) -> None:
    started = asyncio.Event()
    cancelled = False

    async def endless(ctx: JobContext) -> None:
        nonlocal cancelled
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled = True
            raise

    job_id = await store.enqueue("endless", max_attempts=1)
    worker = make_worker(
        store,
        {"endless": endless},
        shutdown_grace=timedelta(seconds=0.2),
        shutdown_timeout=timedelta(seconds=30),
    )
    await worker.start()
    await asyncio.wait_for(started.wait(), 30)
    began = time.monotonic()
    await asyncio.wait_for(worker.stop(), 60)
    assert time.monotonic() - began < 15  # after the grace, not at shutdown_timeout
    assert cancelled
    job = await store.get_job(job_id)
    assert job is not None
    assert (job.status, job.attempts, job.locked_by) == (JobStatus.READY, 0, None)
    assert job.last_error is not None
    assert "interrupted" in job.last_error


async def test_shutdown_is_bounded_when_a_handler_swallows_cancellation(
    store: PgJobStore,
) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    returned = asyncio.Event()

    async def stubborn(ctx: JobContext) -> str:
        started.set()
        try:
            while not release.is_set():
                try:
                    await asyncio.sleep(0.05)
                except asyncio.CancelledError:
                    continue  # a badly behaved handler
            return "too late"
        finally:
            returned.set()

    job_id = await store.enqueue("stubborn")
    worker = make_worker(store, {"stubborn": stubborn}, shutdown_grace=0.2, shutdown_timeout=2)
    await worker.start()
    await asyncio.wait_for(started.wait(), 30)
    began = time.monotonic()
    # The handler never ends by itself: the shutdown_timeout (2 s) ends the stop.
    await asyncio.wait_for(worker.stop(), 60)
    assert time.monotonic() - began < 10
    # Not put back while its handler still runs: it would run elsewhere at the same time.
    # The reaper takes it back once this worker's heartbeat is stale.
    assert await status_of(store, job_id) == "RUNNING"
    release.set()
    await asyncio.wait_for(returned.wait(), 30)
    await asyncio.sleep(0.5)  # time to write its result, were it written
    assert await status_of(store, job_id) == "RUNNING"  # its late result was not written


async def test_handler_transactions_never_deadlock_the_pool(dsn: str) -> None:
    store = PgJobStore(dsn, max_size=2)  # far fewer connections than handlers
    await store.start()
    try:

        async def parent(ctx: JobContext) -> None:
            async with ctx.store.transaction() as tx:
                await tx.execute("SELECT pg_sleep(0.01)")
                await ctx.store.enqueue("child", {"of": ctx.job.id})

        async def child(ctx: JobContext) -> None:
            return None

        for _ in range(40):
            await store.enqueue("parent")
        worker = make_worker(store, {"parent": parent, "child": child}, concurrency=8)
        assert await asyncio.wait_for(worker.drain(), timeout=60) == 80
    finally:
        await store.close()


async def test_lifespan_starts_and_stops_everything(dsn: str, store: PgJobStore) -> None:
    async def handler(ctx: JobContext) -> str:
        return "ran"

    own_store = PgJobStore(dsn)
    worker = make_worker(own_store, {"t": handler})
    async with worker.lifespan(object()):
        assert own_store.started
        assert worker.is_running
        job_id = await own_store.enqueue("t")
        await wait_until(lambda: _is_done(store, job_id))
    assert not worker.is_running
    assert not own_store.started


async def test_lifespan_with_worker_disabled_only_opens_the_store(
    dsn: str, store: PgJobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKER_ENABLED", "false")

    async def handler(ctx: JobContext) -> None:
        return None

    own_store = PgJobStore(dsn)
    worker = Worker(store=own_store, handlers={"t": handler})
    async with worker.lifespan(None):
        job_id = await own_store.enqueue("t")
        await asyncio.sleep(0.3)
        assert not worker.is_running
    assert await status_of(store, job_id) == "READY"


async def test_run_until_stop(store: PgJobStore) -> None:
    async def handler(ctx: JobContext) -> str:
        return "ran"

    worker = make_worker(store, {"t": handler})
    running = asyncio.create_task(worker.run())
    job_id = await store.enqueue("t")
    await wait_until(lambda: _is_done(store, job_id))
    await worker.stop()
    await asyncio.wait_for(running, 30)


async def test_many_jobs_with_concurrency(store: PgJobStore, conn: asyncpg.Connection) -> None:
    active = 0
    peak = 0

    async def handler(ctx: JobContext) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.01)
        active -= 1

    for _ in range(100):
        await store.enqueue("t")
    assert await make_worker(store, {"t": handler}, concurrency=5).drain() == 100
    assert peak == 5
    assert await counts(conn) == {"DONE": 100}


def test_bad_worker_arguments_are_named(dsn: str) -> None:
    store = PgJobStore(dsn)

    async def ok(ctx: JobContext) -> None:
        return None

    with pytest.raises(ValueError, match="needs handlers"):
        Worker(store=store, handlers={})
    with pytest.raises(TypeError, match="'send' is not callable"):
        Worker(store=store, handlers={"send": "not a function"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="must not exceed shutdown_timeout"):
        Worker(store=store, handlers={"t": ok}, shutdown_grace=60, shutdown_timeout=30)
    with pytest.raises(TypeError, match="needs a PgJobStore"):
        Worker(store="postgresql://x", handlers={"t": ok})  # type: ignore[arg-type]


def test_unknown_job_type_names_the_fix(dsn: str) -> None:
    async def ok(ctx: JobContext) -> None:
        return None

    worker = Worker(store=PgJobStore(dsn), handlers={"a": ok, "b": ok}, worker_id="w9")
    assert worker.handler_for("a").func is ok
    with pytest.raises(UnknownJobType, match=r"no handler for job type 'c' \(it handles: a, b\)"):
        worker.handler_for("c")


async def test_snooze_runs_later_without_using_an_attempt(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    runs = 0

    async def busy_twice(ctx: JobContext) -> int:
        nonlocal runs
        runs += 1
        if runs <= 2:
            raise Snooze(after=0)
        return ctx.attempt

    job_id = await store.enqueue("t", max_attempts=1)  # a Retry would have failed it
    assert await make_worker(store, {"t": busy_twice}).drain() == 3
    job = await store.get_job(job_id)
    assert job is not None
    assert (job.status, job.attempts, job.result, runs) == (JobStatus.DONE, 1, 1, 3)

    async def later(ctx: JobContext) -> None:
        raise Snooze(after=timedelta(minutes=10))

    snoozed = await store.enqueue("later")
    await make_worker(store, {"later": later}).drain()
    row = await conn.fetchrow(
        "SELECT status, attempts, run_after - updated_at AS delay FROM jobs WHERE id = $1",
        snoozed,
    )
    assert row is not None
    assert (row["status"], row["attempts"], row["delay"]) == ("READY", 0, timedelta(minutes=10))
    with pytest.raises(ValueError, match=r"Snooze\(after=\.\.\.\) needs a timedelta"):
        Snooze(after=-1)


async def test_a_disabled_worker_needs_no_handlers_and_an_enabled_one_says_so(
    store: PgJobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The API half of a split deployment mounts the same lifespan with no handlers.
    api_side = Worker(store, handlers={}, enabled=False)
    async with api_side.lifespan(None):
        assert store.started
        assert not api_side.is_running
        await store.enqueue("elsewhere", {})
    monkeypatch.setenv("WORKER_ENABLED", "false")
    Worker(store, handlers={})  # disabled by the environment
    with pytest.raises(RuntimeError, match="needs a worker with handlers: this one has none"):
        await Worker(store, handlers={}).drain()
    monkeypatch.setenv("WORKER_ENABLED", "true")
    with pytest.raises(ValueError, match=r"needs handlers to run jobs.*WORKER_ENABLED=false"):
        Worker(store, handlers={})


class CountingStore:
    """A test double: a PgJobStore behind a wrapper that counts the calls made to it."""

    def __init__(self, store: PgJobStore) -> None:
        self._store = store
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._store, name)
        if callable(value):
            self.calls[name] = self.calls.get(name, 0) + 1
        return value


async def test_a_worker_takes_any_store_with_what_it_uses(store: PgJobStore) -> None:
    double = CountingStore(store)
    stores_seen: list[object] = []

    async def job(ctx: JobContext) -> None:
        stores_seen.append(ctx.store)

    await store.enqueue_many([{"job_type": "job"}] * 3)
    assert await Worker(double, {"job": job}).drain() == 3
    assert stores_seen == [double] * 3
    assert double.calls["pickup_batch"] >= 1
    assert double.calls["mark_done_batch"] >= 1

    class HalfAStore:
        observers = ()

        async def pickup_batch(self) -> None: ...

    with pytest.raises(
        TypeError, match=r"HalfAStore lacks add_type_minutes, analyze, cancel, channel, close"
    ):
        Worker(HalfAStore(), {"job": job})  # type: ignore[arg-type]
