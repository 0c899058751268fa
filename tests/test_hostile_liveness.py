"""Liveness and the reaper under hostile conditions, found by an adversarial review: two
workers with one worker_id, a shutdown whose handler goes on, a row no update can touch,
a heartbeat connection that cannot be opened, a reaper with a shorter stale period.

Each test states a promise of docs/reliability.md or docs/state-machine.md and checks
it, on a real PostgreSQL, under a condition that broke it before it was fixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from pqrun import JobContext, JobStatus, PgJobStore, Worker

from .helpers import QUICK_POLICIES, wait_until


class RunLog:
    """Records every run of every job: (job id, who, start, end), to find overlaps."""

    def __init__(self) -> None:
        self.runs: list[list[object]] = []

    def start(self, job_id: int, who: str) -> list[object]:
        run: list[object] = [job_id, who, time.monotonic(), None]
        self.runs.append(run)
        return run

    @staticmethod
    def end(run: list[object]) -> None:
        run[3] = time.monotonic()

    def overlaps(self) -> list[tuple[object, object]]:
        found = []
        now = time.monotonic()
        for i, a in enumerate(self.runs):
            for b in self.runs[i + 1 :]:
                if a[0] != b[0]:
                    continue
                a_end = a[3] if a[3] is not None else now
                b_end = b[3] if b[3] is not None else now
                if a[2] < b_end and b[2] < a_end:  # type: ignore[operator]
                    found.append((a[1], b[1]))
        return found


@pytest.mark.slow
async def test_two_live_workers_with_one_worker_id_never_run_one_job_at_once(
    dsn: str, store: PgJobStore
) -> None:
    """A restarted container keeps its hostname and pid 1, and so its default worker_id;
    two replicas with network_mode=host, or one configured WORKER_ID, share one too.

    Before this change each run's heartbeat was on its own job row (keyed by its lease),
    so two workers with one id never disturbed each other. Now both rewrite the same
    job_workers row with *their own* claims only: whichever wrote last erases the other's
    list, and the reaper takes back the other one's running job while it runs. The job is
    run twice (at once, until the next heartbeat of its first runner notices), and a job
    longer than a stale period may never finish.
    """
    log = RunLog()

    def make_handler(who: str) -> Callable[[JobContext], Awaitable[str]]:
        async def long_job(ctx: JobContext) -> str:
            run = log.start(ctx.job.id, who)
            try:
                await asyncio.sleep(4.0)
            finally:
                log.end(run)
            return "ok"

        return long_job

    stale = timedelta(seconds=1.5)
    workers = [
        Worker(
            PgJobStore(dsn),
            handlers={"long": make_handler(name)},
            worker_id="box-1",  # e.g. f"{hostname}-{pid}" with pid 1 in both containers
            default_stale_after=stale,
            reap_stale_every_seconds=0.1,
            **QUICK_POLICIES,
        )
        for name in ("first", "second")
    ]
    await workers[0].start()
    try:
        job_id = await store.enqueue("long", max_attempts=10)
        await wait_until(lambda: _true(bool(log.runs)), within=10)
        await workers[1].start()  # idle: it only heartbeats (with no claims) and reaps

        async def finished() -> bool:
            job = await store.get_job(job_id)
            return job is not None and job.status.is_finished

        with contextlib.suppress(AssertionError):
            await wait_until(finished, within=15)
    finally:
        for worker in workers:
            await worker.stop()
            await worker.store.close()
    job = await store.get_job(job_id)
    assert job is not None
    assert log.overlaps() == [], f"runs of job {job_id} overlapped: {log.runs}"
    assert (job.status, job.attempts, len(log.runs)) == (JobStatus.DONE, 1, 1), job.last_error


async def _true(value: bool) -> bool:
    return value


@pytest.mark.slow
async def test_shutdown_does_not_put_back_a_job_whose_handler_goes_on(
    dsn: str, store: PgJobStore
) -> None:
    """docs/deployment.md: on SIGTERM the worker "cancels the rest and puts them back to
    READY at once". A handler that catches CancelledError to finish its work (or cleans up
    slowly in ``finally``) is still running when its job goes back to READY: another
    worker starts the same job while the first run still runs. (The shutdown log then
    says such jobs are "left RUNNING", which they are not.) The lost-claim path
    (_stop_runs_no_longer_owned) does not have this problem only because the row is
    already someone else's there; at shutdown pqrun itself hands the row away.
    """
    log = RunLog()

    def make_handler(who: str) -> Callable[[JobContext], Awaitable[str]]:
        async def stubborn(ctx: JobContext) -> str:
            run = log.start(ctx.job.id, who)
            try:
                try:
                    await asyncio.sleep(30)
                except asyncio.CancelledError:
                    await asyncio.sleep(2.0)  # "finish what I was doing" / slow cleanup
                return "ok"
            finally:
                log.end(run)

        return stubborn

    first = Worker(
        PgJobStore(dsn),
        handlers={"t": make_handler("first")},
        shutdown_grace=0.2,
        shutdown_timeout=4.0,
        **QUICK_POLICIES,
    )
    second = Worker(PgJobStore(dsn), handlers={"t": make_handler("second")}, **QUICK_POLICIES)
    await first.start()
    try:
        await store.enqueue("t")
        await wait_until(lambda: _true(bool(log.runs)), within=10)
        await second.start()
        await first.stop()
        await asyncio.sleep(0.5)
    finally:
        await first.stop()
        await second.stop()
        for worker in (first, second):
            await worker.store.close()
    assert log.overlaps() == [], f"two runs of one job at once: {log.runs}"


async def test_a_row_no_update_can_touch_does_not_stop_the_reaper_for_the_others(
    dsn: str, store: PgJobStore, conn: asyncpg.Connection
) -> None:
    """Claim 3: a trigger that refuses a job's update "fails that job alone". When it
    refuses every move out of RUNNING, the writer abandons the outcome and says "the
    reaper takes the job back once stale". But REAP_STALE moves all stale rows in one
    statement: that row's trigger error rolls back the whole reap, every time. The
    poisoned job stays RUNNING for ever, and so does every job of every dead worker of
    the queue: one bad row disables recovery for all.
    """
    await conn.execute(
        """
        CREATE OR REPLACE FUNCTION attack_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'job % may not leave RUNNING', OLD.id;
        END $$;
        DROP TRIGGER IF EXISTS attack_refuse ON jobs;
        CREATE TRIGGER attack_refuse BEFORE UPDATE ON jobs FOR EACH ROW
        WHEN (OLD.payload ? 'poison' AND OLD.status = 'RUNNING' AND NEW.status <> 'RUNNING')
        EXECUTE FUNCTION attack_refuse();
        """
    )
    ran: list[int] = []

    async def handler(ctx: JobContext) -> str:
        ran.append(ctx.job.id)
        return "ok"

    worker = Worker(
        PgJobStore(dsn),
        handlers={"t": handler},
        default_stale_after=timedelta(seconds=1),
        reap_stale_every_seconds=0.1,
        **QUICK_POLICIES,
    )
    try:
        poisoned = await store.enqueue("t", {"poison": True})
        await worker.start()
        await wait_until(lambda: _true(poisoned in ran), within=10)
        await asyncio.sleep(2.5)  # its claim is stale and no heartbeat lists it
        # A worker that died holding another job (its claim is long stale).
        orphan = await store.enqueue("other")  # a type no live worker here runs
        await store.pickup_batch("dead-worker", ["other"], 1)
        await conn.execute(
            "UPDATE jobs SET locked_at = now() - interval '1 hour' "
            "WHERE id = $1 AND status = 'RUNNING'",
            orphan,
        )

        async def orphan_recovered() -> bool:
            job = await store.get_job(orphan)
            return job is not None and job.status is not JobStatus.RUNNING

        with contextlib.suppress(AssertionError):
            await wait_until(orphan_recovered, within=5)
        poisoned_job = await store.get_job(poisoned)
        orphan_job = await store.get_job(orphan)
    finally:
        await worker.stop()
        await worker.store.close()
        await conn.execute(
            "DROP TRIGGER IF EXISTS attack_refuse ON jobs; DROP FUNCTION IF EXISTS attack_refuse()"
        )
    assert orphan_job is not None
    assert poisoned_job is not None
    assert orphan_job.status is not JobStatus.RUNNING, (
        "a dead worker's job was never taken back: the reaper fails on the poisoned row"
    )
    # The poisoned job itself can leave RUNNING by no means (its trigger refuses every
    # move): the docs should say so instead of "the reaper takes it back once stale".
    assert poisoned_job.status is JobStatus.RUNNING


@pytest.mark.slow
async def test_heartbeats_go_through_the_pool_when_their_connection_cannot_be_opened(
    dsn: str, store: PgJobStore, conn: asyncpg.Connection
) -> None:
    """Liveness now needs one more connection than the pool. When it drops (a restart of
    a pgbouncer, an idle timeout, a terminated backend) and cannot be opened again because
    the role or the server is at its connection limit, the worker goes on running its
    handlers with a working pool, but sends no heartbeat: another worker's reaper takes
    its job back and runs it again while the first run goes on. Nothing stops the first
    run (no heartbeat means no STILL_OWNED read either). Before this change the heartbeat
    went through the pool, which still worked.
    """
    role = f"pqrun_limited_{os.getpid()}"
    await conn.execute(f'DROP ROLE IF EXISTS "{role}"')
    await conn.execute(f'CREATE ROLE "{role}" LOGIN')
    await conn.execute(
        f'GRANT ALL ON ALL TABLES IN SCHEMA public TO "{role}";'
        f'GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO "{role}";'
        f'GRANT USAGE ON SCHEMA public TO "{role}"'
    )
    parts = urlsplit(dsn)
    limited_dsn = urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port or 5432}"))
    log = RunLog()

    def make_handler(who: str) -> Callable[[JobContext], Awaitable[str]]:
        async def long_job(ctx: JobContext) -> str:
            if ctx.job.payload.get("quick"):
                return "quick"
            run = log.start(ctx.job.id, who)
            try:
                await asyncio.sleep(8.0)
            finally:
                log.end(run)
            return "ok"

        return long_job

    stale = timedelta(seconds=2)
    victim = Worker(
        PgJobStore(limited_dsn, min_size=2, max_size=2),
        handlers={"long": make_handler("victim")},
        default_stale_after=stale,
        enable_reaper=False,
        listen=False,
        **QUICK_POLICIES,
    )
    other = Worker(
        PgJobStore(dsn),
        handlers={"long": make_handler("other")},
        default_stale_after=stale,
        reap_stale_every_seconds=0.1,
        **QUICK_POLICIES,
    )
    try:
        await victim.start()
        quick = await store.enqueue("long", {"quick": True})  # opens the writer's connection

        async def quick_done() -> bool:
            job = await store.get_job(quick)
            return job is not None and job.status is JobStatus.DONE

        await wait_until(quick_done, within=10)
        job_id = await store.enqueue("long")
        await wait_until(lambda: _true(bool(log.runs)), within=10)
        await other.start()
        await asyncio.sleep(1.0)  # "other" has lived a while: its reaper may act
        # The role is at its limit; the liveness connection drops and cannot come back.
        used = await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE usename = $1", role)
        await conn.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT {used - 1}')
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE usename = $1 AND query LIKE '%registered AS%'",
            role,
        )
        await asyncio.sleep(5.0)
        pool_works = await victim.store.get_job(job_id)  # the victim's pool still works
        assert pool_works is not None
    finally:
        await victim.stop()
        await other.stop()
        for worker in (victim, other):
            await worker.store.close()
        await conn.execute(f'DROP OWNED BY "{role}"; DROP ROLE IF EXISTS "{role}"')
    assert log.overlaps() == [], f"two runs of one job at once: {log.runs}"


@pytest.mark.slow
async def test_a_reaper_with_a_shorter_stale_period_leaves_a_live_workers_job(
    dsn: str, store: PgJobStore
) -> None:
    """docs/configuration.md: default_stale_after is "how long a worker may go without a
    heartbeat before the reaper takes its jobs back; the worker sends one every sixth of
    it". But the reaper applies *its own* stale period to every worker's jobs: a worker
    deployed with a longer WORKER_STALE_TIMEOUT (heartbeat every 2 s here) has its live
    jobs taken back by the reaper of a worker with a shorter one (1 s), and run twice at
    once. Neither the docs nor the code say that every worker of a queue must share one
    stale period (the reaper could use each worker's own, stored in job_workers).
    """
    log = RunLog()

    def make_handler(who: str) -> Callable[[JobContext], Awaitable[str]]:
        async def long_job(ctx: JobContext) -> str:
            run = log.start(ctx.job.id, who)
            try:
                await asyncio.sleep(4.0)
            finally:
                log.end(run)
            return "ok"

        return long_job

    patient = Worker(
        PgJobStore(dsn),
        handlers={"long": make_handler("patient")},
        default_stale_after=timedelta(seconds=12),
        enable_reaper=False,
        **QUICK_POLICIES,
    )
    hasty = Worker(
        PgJobStore(dsn),
        handlers={"long": make_handler("hasty")},
        default_stale_after=timedelta(seconds=1),
        reap_stale_every_seconds=0.1,
        **QUICK_POLICIES,
    )
    await patient.start()
    try:
        job_id = await store.enqueue("long")
        await wait_until(lambda: _true(bool(log.runs)), within=10)
        await hasty.start()
        await asyncio.sleep(5.0)
    finally:
        for worker in (patient, hasty):
            await worker.stop()
            await worker.store.close()
    assert log.overlaps() == [], f"runs of job {job_id} overlapped: {log.runs}"


async def test_a_worker_id_refused_during_shutdown_skips_the_grace(
    store: PgJobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A WorkerIdInUse found by a heartbeat while the shutdown waits for the loops
    still cuts the grace: the claims are in no heartbeat, and the reaper may take them,
    so waiting would let the job run twice."""
    from pqrun.errors import WorkerIdInUse

    started = asyncio.Event()

    async def blocks(ctx: JobContext) -> None:
        started.set()
        await asyncio.sleep(3600)

    holder = Worker(store, {"other": blocks}, worker_id="dup", **QUICK_POLICIES)
    await holder.start()
    try:
        await wait_until(lambda: _registered(store, "dup"), within=60)
        late = Worker(
            store,
            {"t": blocks},
            worker_id="dup",
            shutdown_grace=120,
            shutdown_timeout=180,
            **QUICK_POLICIES,
        )
        heartbeat, prune = store.heartbeat_claims, store.prune

        async def slow_heartbeat(*args: object, **kwargs: object) -> object:
            if kwargs.get("instance") == late._instance:
                # The refusal comes during the shutdown: once the job runs, not before.
                await started.wait()
                await asyncio.sleep(1.0)
            return await heartbeat(*args, **kwargs)  # type: ignore[arg-type]

        async def slow_prune(*args: object, **kwargs: object) -> object:
            await asyncio.sleep(5.0)  # keeps the shutdown waiting for the loops
            return await prune(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(store, "heartbeat_claims", slow_heartbeat)
        monkeypatch.setattr(store, "prune", slow_prune)
        await store.enqueue("t")
        await late.start()
        await asyncio.wait_for(started.wait(), 60)
        began = time.monotonic()
        await late.stop()
        assert isinstance(late._failure, WorkerIdInUse)
        assert time.monotonic() - began < 60  # not the 120 s grace
    finally:
        await holder.stop()


async def _registered(store: PgJobStore, worker_id: str) -> bool:
    return any(w["worker_id"] == worker_id for w in await store.list_workers())
