"""Liveness cannot be starved: nothing a handler or another session holds makes a live
worker look dead, and no notification can stop a run. Dead workers' jobs come back fast.

The concurrency claims run two worker processes (tests/liveness_worker.py) whose handlers
record each run's start and end on a connection of their own; overlapping runs of one job
are counted from those records.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from pqrun import JobContext, JobStatus, PgJobStore, Worker
from pqrun._localpg import ThrowawayCluster
from pqrun.errors import WorkerIdInUse

from .helpers import QUICK_POLICIES, picked, wait_until

ROOT = Path(__file__).resolve().parent.parent
HOLD = 12.0  # how long each run takes: several stale periods of the worker processes


def start_worker(dsn: str, name: str, mode: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.liveness_worker", dsn, name, mode],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture
async def runs(store: PgJobStore, conn: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    await conn.execute(
        "DROP TABLE IF EXISTS liveness_runs;"
        "CREATE TABLE liveness_runs (id bigserial PRIMARY KEY, job_id bigint NOT NULL,"
        " worker text NOT NULL,"
        " started_at timestamptz NOT NULL DEFAULT clock_timestamp(), ended_at timestamptz)"
    )
    yield conn
    await conn.execute("DROP TABLE IF EXISTS liveness_runs")


OVERLAPS = """
SELECT count(*) FROM liveness_runs AS a JOIN liveness_runs AS b
  ON a.job_id = b.job_id AND a.id < b.id
 AND a.started_at < COALESCE(b.ended_at, clock_timestamp())
 AND b.started_at < COALESCE(a.ended_at, clock_timestamp())
"""


async def _two_workers_under_pressure(
    dsn: str, store: PgJobStore, runs: asyncpg.Connection, mode: str
) -> None:
    """Worker A runs 4 long jobs; worker B, whose reaper could take them, starts; the
    pressure of ``mode`` is applied to A for several stale periods."""
    ids = await store.enqueue_many([{"job_type": "slow", "payload": {"hold": HOLD}}] * 4)
    first = start_worker(dsn, "A", mode)
    second: subprocess.Popen[bytes] | None = None
    locker: asyncpg.Connection | None = None
    try:

        async def all_started() -> bool:
            return bool(await runs.fetchval("SELECT count(*) FROM liveness_runs") == 4)

        await wait_until(all_started, within=60)
        second = start_worker(dsn, "B", mode)

        async def b_alive() -> bool:
            return any(w["worker_id"] == "B" for w in await store.list_workers())

        await wait_until(b_alive, within=60)
        if mode == "lock":
            # Another session holds one running job's row for several stale periods.
            locker = await asyncpg.connect(dsn)
            await locker.execute("BEGIN")
            await locker.execute("SELECT * FROM jobs WHERE id = $1 FOR UPDATE", ids[0])
            await asyncio.sleep(8)
            await locker.execute("ROLLBACK")
        else:
            # The handlers hold every pooled connection of A for their whole run.
            await asyncio.sleep(8)

        async def all_done() -> bool:
            done = await runs.fetchval(
                "SELECT count(*) FROM jobs WHERE status = 'DONE' AND id = ANY($1)", ids
            )
            return bool(done == 4)

        await wait_until(all_done, within=90)
    finally:
        if locker is not None:
            await locker.close()
        for process in (first, second):
            if process is not None:
                process.terminate()
                process.wait(30)
    overlaps = await runs.fetchval(OVERLAPS)
    per_job = await runs.fetch(
        "SELECT job_id, count(*) AS n FROM liveness_runs GROUP BY job_id ORDER BY job_id"
    )
    attempts = await runs.fetch("SELECT attempts FROM jobs WHERE id = ANY($1)", ids)
    assert overlaps == 0
    assert [row["n"] for row in per_job] == [1, 1, 1, 1]
    assert [row["attempts"] for row in attempts] == [1, 1, 1, 1]


@pytest.mark.slow
async def test_a_row_lock_on_a_running_job_does_not_make_its_live_worker_look_dead(
    dsn: str, store: PgJobStore, runs: asyncpg.Connection
) -> None:
    await _two_workers_under_pressure(dsn, store, runs, "lock")


@pytest.mark.slow
async def test_handlers_holding_every_pooled_connection_do_not_starve_liveness(
    dsn: str, store: PgJobStore, runs: asyncpg.Connection
) -> None:
    await _two_workers_under_pressure(dsn, store, runs, "pool")


async def test_the_heartbeat_never_waits_for_a_lock_on_a_job_row(
    dsn: str, store: PgJobStore
) -> None:
    await store.enqueue("t")
    job = await picked(store, "w")
    locker = await asyncpg.connect(dsn)
    try:
        await locker.execute("BEGIN")
        await locker.execute("SELECT * FROM jobs WHERE id = $1 FOR UPDATE", job.id)
        # A store.cancel() left open in a transaction holds the row the same way.
        owned = await asyncio.wait_for(store.heartbeat("w", [job]), 5)
        assert owned == {job.id}
    finally:
        await locker.close()


async def test_a_running_row_with_no_owner_is_taken_back(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    # Written by hand: RUNNING with no worker, with or without a claim time.
    no_owner = await conn.fetchval(
        "INSERT INTO jobs (job_type, status, attempts, locked_at, updated_at) "
        "VALUES ('t', 'RUNNING', 1, now() - interval '1 hour', now() - interval '1 hour') "
        "RETURNING id"
    )
    nothing = await conn.fetchval(
        "INSERT INTO jobs (job_type, status, updated_at) "
        "VALUES ('t', 'RUNNING', now() - interval '1 hour') RETURNING id"
    )
    reaped = await store.reap_stale(timedelta(seconds=30))
    assert sorted(reaped) == [(no_owner, JobStatus.READY), (nothing, JobStatus.READY)]


async def test_a_claim_its_live_worker_no_longer_holds_is_taken_back(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    # The claim committed but its answer never reached the worker (a dropped connection):
    # the worker is alive, yet nobody runs the job.
    await store.enqueue("t")
    await store.enqueue("t")
    held, lost = await store.pickup_batch("w", None, 2)
    await conn.execute(
        "UPDATE jobs SET locked_at = now() - interval '1 hour',"
        " heartbeat_at = now() - interval '1 hour'"
    )
    await store.heartbeat("w", [held])
    assert await store.reap_stale(timedelta(seconds=30)) == [(lost.id, JobStatus.READY)]
    assert await store.heartbeat("w", [held]) == {held.id}


@pytest.mark.slow
async def test_workers_that_each_live_less_than_a_stale_period_still_recover_the_dead(
    dsn: str, store: PgJobStore, conn: asyncpg.Connection
) -> None:
    # A crash loop or autoscaling churn: no worker lives a whole stale period, yet the
    # job a dead worker left RUNNING comes back and runs.
    job_id = await store.enqueue("t")
    await store.pickup_batch("dead", None, 1)
    await conn.execute(
        "UPDATE jobs SET locked_at = now() - interval '1 hour',"
        " heartbeat_at = now() - interval '1 hour' WHERE id = $1",
        job_id,
    )
    ran = asyncio.Event()

    async def handler(ctx: JobContext) -> None:
        ran.set()

    stale = 6.0
    for _ in range(8):
        worker = Worker(
            PgJobStore(dsn),
            handlers={"t": handler},
            default_stale_after=timedelta(seconds=stale),
            reap_stale_every_seconds=0.2,
            **QUICK_POLICIES,
        )
        await worker.start()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ran.wait(), stale - 1)
        finally:
            await worker.stop()
            await worker.store.close()
        if ran.is_set():
            break
    assert ran.is_set()
    job = await store.get_job(job_id)
    assert job is not None
    assert job.status is JobStatus.DONE


async def test_a_cancel_notification_from_any_role_cannot_stop_a_run(
    dsn: str, store: PgJobStore, conn: asyncpg.Connection
) -> None:
    role = f"pqrun_outsider_{os.getpid()}"
    await conn.execute(f'DROP ROLE IF EXISTS "{role}"')
    await conn.execute(f'CREATE ROLE "{role}" LOGIN')  # no privilege on any table
    started = asyncio.Event()
    release = asyncio.Event()

    async def handler(ctx: JobContext) -> str:
        started.set()
        await release.wait()
        return "finished"

    worker = Worker(store, handlers={"t": handler}, **QUICK_POLICIES)
    job_id = await store.enqueue("t")
    await worker.start()
    outsider = await asyncpg.connect(dsn, user=role)
    try:
        await asyncio.wait_for(started.wait(), 30)
        for _ in range(3):
            await outsider.execute(f"NOTIFY \"{store.channel}\", 'cancel:{job_id}'")
        await asyncio.sleep(1)  # time for the worker to act on it, if it wrongly would
        release.set()

        async def finished() -> bool:
            job = await store.get_job(job_id)
            return job is not None and job.status.is_finished

        await wait_until(finished, within=30)
    finally:
        release.set()
        await outsider.close()
        await worker.stop()
        await conn.execute(f'DROP ROLE IF EXISTS "{role}"')
    job = await store.get_job(job_id)
    assert job is not None
    assert (job.status, job.result, job.attempts) == (JobStatus.DONE, "finished", 1)


@pytest.mark.slow
async def test_after_a_database_restart_no_live_workers_job_is_taken_back(
    private_cluster: ThrowawayCluster,
) -> None:
    # Every heartbeat is stale once the database is back; the reaper must wait until the
    # live workers have sent theirs again.
    dsn = private_cluster.dsn
    started = asyncio.Event()
    finish = asyncio.Event()
    runs: list[int] = []

    async def long_job(ctx: JobContext) -> str:
        runs.append(ctx.job.id)
        started.set()
        await finish.wait()
        return "done"

    async def nothing(ctx: JobContext) -> None:
        return None

    stale = timedelta(seconds=2)
    holder = Worker(
        PgJobStore(dsn, connect_timeout=1),
        handlers={"long": long_job},
        default_stale_after=stale,
        enable_reaper=False,
        **QUICK_POLICIES,
    )
    reaper = Worker(
        PgJobStore(dsn, connect_timeout=1),
        handlers={"other": nothing},
        default_stale_after=stale,
        reap_stale_every_seconds=0.1,
        **QUICK_POLICIES,
    )
    await holder.start()
    await reaper.start()
    try:
        job_id = await holder.store.enqueue("long")
        await asyncio.wait_for(started.wait(), 30)
        await asyncio.to_thread(private_cluster.stop)
        await asyncio.sleep(stale.total_seconds() * 1.5)  # every heartbeat goes stale
        await asyncio.to_thread(private_cluster.start)
        await asyncio.sleep(stale.total_seconds() * 3)  # the reaper has had its chances
        job = await holder.store.get_job(job_id)
        assert job is not None
        assert (job.status, job.attempts) == (JobStatus.RUNNING, 1)
        finish.set()

        async def done() -> bool:
            job = await holder.store.get_job(job_id)
            return job is not None and job.status is JobStatus.DONE

        await wait_until(done, within=30)
    finally:
        finish.set()
        for worker in (holder, reaper):
            await worker.stop()
            await worker.store.close()
    assert runs == [job_id]


async def test_a_second_live_worker_with_the_same_worker_id_is_refused(
    store: PgJobStore, dsn: str
) -> None:
    # Its heartbeats would overwrite the first one's list of claims, and the reaper would
    # take the first one's jobs while it runs them.
    async def handler(ctx: JobContext) -> None:
        return None

    first = Worker(store, handlers={"t": handler}, worker_id="same", **QUICK_POLICIES)
    second = Worker(PgJobStore(dsn), handlers={"t": handler}, worker_id="same", **QUICK_POLICIES)
    await first.start()
    try:

        async def registered() -> bool:
            return any(w["worker_id"] == "same" for w in await store.list_workers())

        await wait_until(registered)
        with pytest.raises(WorkerIdInUse, match="'same' is in use by another live worker"):
            await asyncio.wait_for(second.run(), 30)
        assert first.is_running
        assert any(w["worker_id"] == "same" for w in await store.list_workers())
    finally:
        await first.stop()
        await second.store.close()
    # Once the first is gone, the name is free again.
    third = Worker(PgJobStore(dsn), handlers={"t": handler}, worker_id="same", **QUICK_POLICIES)
    await third.store.enqueue("t")
    assert await asyncio.wait_for(third.drain(), 30) == 1
    await third.store.close()


async def test_after_an_outage_nothing_is_reaped_until_the_workers_have_been_back_a_while(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    job_id = await store.enqueue("t")
    await store.pickup_batch("dead", None, 1)
    await conn.execute(
        "UPDATE jobs SET locked_at = now() - interval '1 hour',"
        " heartbeat_at = now() - interval '1 hour'"
    )
    stale, wait = timedelta(seconds=30), timedelta(seconds=15)

    async def workers(*spans: tuple[int, int]) -> None:
        # (seconds ago its run of heartbeats began, seconds ago its last heartbeat)
        await conn.execute("DELETE FROM job_workers")
        for number, (since, last) in enumerate(spans):
            await conn.execute(
                "INSERT INTO job_workers (worker_id, host, pid, job_types, concurrency,"
                " alive_since, heartbeat_at, stale_after) VALUES ($1, 'h', 1, '{}', 1,"
                " now() - $2::interval, now() - $3::interval, interval '30 seconds')",
                f"w{number}",
                timedelta(seconds=since),
                timedelta(seconds=last),
            )

    # Everyone has just come back after a minute without the database.
    await workers((5, 1), (4, 2), (70, 65))
    assert await store.reap_stale(stale, reachable_for=wait) == []
    # A worker of an older release keeps no alive_since: its row proves nothing.
    await conn.execute(
        "INSERT INTO job_workers (worker_id, host, pid, job_types, concurrency, alive_since)"
        " VALUES ('old', 'h', 1, '{}', 1, now() - interval '1 hour')"
    )
    assert await store.reap_stale(stale, reachable_for=wait) == []
    # Workers that each lived a few seconds, one after another, cover the last 15 s.
    await workers((40, 12), (14, 6), (7, 1))
    assert await store.reap_stale(stale, reachable_for=wait) == [(job_id, JobStatus.READY)]
