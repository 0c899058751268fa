"""RUNNING is not always running: jobs claimed into a worker's buffer wait for a slot.

Each heartbeat says which held jobs have a handler running (`job_workers.started_jobs`),
so status, top, the dashboard and a job's page tell the two apart; and a prefetched job
does not wait behind slots that stay busy: after BUFFER_WAIT_LIMIT it goes back to READY
for an idle worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

import pqrun
from pqrun import Handler, JobContext, PgJobStore, Worker
from pqrun._worker.fetcher import BUFFER_WAIT_LIMIT

from .helpers import QUICK, status_of, wait_until
from .test_cli_commands import pqrun as pqrun_cli

TWO_RUNNING = """
INSERT INTO jobs (id, job_type, status, attempts, locked_by, locked_at, lease_id)
VALUES (101, 'resize', 'RUNNING', 1, 'w-buffered', now(), 1),
       (102, 'resize', 'RUNNING', 1, 'w-buffered', now(), 2);
INSERT INTO job_workers (worker_id, host, pid, job_types, concurrency, held_jobs, held_leases,
                         started_jobs)
VALUES ('w-buffered', 'host-a', 4242, '{resize}', 1, '{101,102}', '{1,2}', '{101}');
"""


async def test_status_top_the_dashboard_and_a_jobs_page_tell_waiting_from_running(
    store: PgJobStore, conn: asyncpg.Connection, dsn: str
) -> None:
    await conn.execute(TWO_RUNNING)
    (resize,) = await store.queue_stats()
    assert (resize["running"], resize["waiting"]) == (2, 1)
    status = await store.queue_status()
    assert status["by_type"] == [
        {"job_type": "resize", "ready": 0, "due": 0, "running": 2, "waiting": 1, "paused": False}
    ]
    assert [w["busy"] for w in status["workers"]] == [1]
    started, waiting = (await store.get_job(101)), (await store.get_job(102))
    assert started is not None
    assert waiting is not None
    assert await store.run_state(started) == "started"
    assert await store.run_state(waiting) == "waiting"

    app = FastAPI()
    app.mount("/jobs", pqrun.dashboard(store))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        overview = (await http.get("/jobs/")).text
        assert "of which waiting" in overview
        assert "1 of 1" in overview  # the worker's busy slots
        assert "handler running" in (await http.get("/jobs/jobs/101")).text
        assert "waiting for a free slot" in (await http.get("/jobs/jobs/102")).text

    shown = await pqrun_cli("status", "--dsn", dsn)
    assert shown.returncode == 0, shown.stderr
    assert "1 of 1 slots busy" in shown.stdout
    row = next(line for line in shown.stdout.splitlines() if line.strip().startswith("resize"))
    assert row.split()[1:] == ["0", "0", "2", "1"]  # ready, due, running, waiting


async def test_a_stale_heartbeat_says_nothing_of_its_jobs(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    await conn.execute(TWO_RUNNING)
    await conn.execute("UPDATE job_workers SET heartbeat_at = now() - interval '5 minutes'")
    (resize,) = await store.queue_stats()
    assert (resize["running"], resize["waiting"]) == (2, 0)  # unknown: not said to wait
    job = await store.get_job(101)
    assert job is not None
    assert await store.run_state(job) is None


async def test_a_workers_heartbeat_lists_the_jobs_whose_handler_runs(store: PgJobStore) -> None:
    gate = asyncio.Event()

    async def hold(ctx: JobContext) -> None:
        await gate.wait()

    job_id = await store.enqueue("hold")
    worker = Worker(store, {"hold": hold}, default_stale_after=timedelta(seconds=3), **QUICK)
    await worker.start()
    try:

        async def started() -> bool:
            job = await store.get_job(job_id)
            return job is not None and await store.run_state(job) == "started"

        await wait_until(started, within=60)
        (hold_stats,) = await store.queue_stats()
        assert (hold_stats["running"], hold_stats["waiting"]) == (1, 0)
    finally:
        gate.set()
        await worker.stop()


async def test_prefetched_jobs_behind_a_busy_slot_go_back_for_an_idle_worker(
    store: PgJobStore, dsn: str, conn: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pqrun")
    gate = asyncio.Event()

    async def slow(ctx: JobContext) -> str:
        await gate.wait()
        return ctx.worker_id

    async def quick(ctx: JobContext) -> str:
        return ctx.worker_id

    quicker = timedelta(seconds=3)  # heartbeats, and so roster reads, every second
    busy = Worker(
        store, {"slow": slow, "quick": quick}, worker_id="busy", concurrency=1, prefetch=50,
        default_stale_after=quicker, **QUICK,
    )  # fmt: skip
    idle_store = PgJobStore(dsn)
    await idle_store.start()
    idle = Worker(
        idle_store, {"quick": quick}, worker_id="idle", concurrency=4,
        default_stale_after=quicker, **QUICK,
    )  # fmt: skip
    await busy.start()
    try:
        # Quick runs size the busy worker's prefetch (about 50 ms of work: dozens).
        warm = [await store.enqueue("quick") for _ in range(20)]
        await wait_until(lambda: _all_done(store, warm), within=60)
        # One statement: the slow job first, then quick ones, claimed in one batch.
        slow_id, *quick_ids = await store.enqueue_many(
            [{"job_type": "slow", "priority": 1}] + [{"job_type": "quick"}] * 5
        )

        async def all_claimed_by_busy() -> bool:
            owners = await conn.fetch(
                "SELECT locked_by FROM jobs WHERE id = ANY($1::bigint[]) AND status = 'RUNNING'",
                [slow_id, *quick_ids],
            )
            return [r["locked_by"] for r in owners] == ["busy"] * 6

        await wait_until(all_claimed_by_busy, within=60)
        # Alone, the busy worker keeps them (nobody else would take them); once it
        # knows of an idle worker of that type, it gives them back. (On a worker without
        # the bound, they wait in its buffer until the slow job ends.)
        await idle.start()
        await wait_until(lambda: _all_done(store, quick_ids), within=60)
        results = {(await store.get_job(i)).result for i in quick_ids}  # type: ignore[union-attr]
        assert results == {"idle"}
        assert await status_of(store, slow_id) == "RUNNING"
        assert any("gave 5 prefetched jobs back" in r.getMessage() for r in caplog.records)
        last_errors = await conn.fetch(
            "SELECT last_error FROM jobs WHERE id = ANY($1::bigint[])", quick_ids
        )
        assert [r["last_error"] for r in last_errors] == [None] * 5  # nothing went wrong
    finally:
        gate.set()
        await busy.stop()
        await idle.stop()
        await idle_store.close()


async def test_a_clogged_buffer_is_kept_when_no_other_worker_takes_it_or_its_type_is_limited(
    store: PgJobStore,
) -> None:
    gate = asyncio.Event()

    async def slow(ctx: JobContext) -> None:
        await gate.wait()

    async def quick(ctx: JobContext) -> None:
        return None

    handlers: dict[str, Any] = {
        "slow": slow, "quick": quick, "capped": Handler(quick, concurrency_limit=5),
    }  # fmt: skip
    worker = Worker(store, handlers, concurrency=1, prefetch=50, **QUICK)
    await worker.start()
    try:
        warm = [await store.enqueue("quick") for _ in range(20)]
        await wait_until(lambda: _all_done(store, warm), within=60)
        await store.enqueue_many(
            [{"job_type": "slow", "priority": 1}]
            + [{"job_type": "quick"}] * 3
            + [{"job_type": "capped"}] * 2
        )
        parts = worker._parts
        await wait_until(lambda: _buffered(parts, 5), within=60)
        # Long enough that the buffer is clogged (every slot busy past the limit)...
        await wait_until(lambda: _clogged(parts), within=60)
        # ... and yet nothing is given back: nobody else takes "quick", and "capped" is
        # limited (its claim spent its room).
        assert parts.fetcher.clogged_buffer(lambda job_type: False) == []
        assert parts.fetcher.clogged_buffer(lambda job_type: job_type == "capped") == []
        assert len(parts.registry.buffer) == 5
        given = parts.fetcher.clogged_buffer(lambda job_type: True)
        assert sorted(job.job_type for job, _at in given) == ["quick"] * 3
        parts.registry.buffer.extendleft(reversed(given))  # this worker's after all
    finally:
        gate.set()
        await worker.stop()


async def test_a_failed_give_back_keeps_the_jobs_held_and_runs_them_here(
    store: PgJobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = asyncio.Event()

    async def slow(ctx: JobContext) -> None:
        await gate.wait()

    async def quick(ctx: JobContext) -> str:
        return "here"

    async def broken_release(jobs: Any, reason: Any) -> list[int]:
        raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle")

    worker = Worker(store, {"slow": slow, "quick": quick}, concurrency=1, prefetch=50, **QUICK)
    await worker.start()
    try:
        warm = [await store.enqueue("quick") for _ in range(20)]
        await wait_until(lambda: _all_done(store, warm), within=60)
        parts = worker._parts
        monkeypatch.setattr(parts.roster, "others_handle", lambda job_type: True)
        monkeypatch.setattr(store, "release", broken_release)
        _slow_id, *quick_ids = await store.enqueue_many(
            [{"job_type": "slow", "priority": 1}] + [{"job_type": "quick"}] * 3
        )
        await wait_until(lambda: _buffered(parts, 3), within=60)
        await wait_until(lambda: _stopped_prefetching(parts), within=60)
        # The give-back failed: still held (the heartbeats list them), back in the buffer.
        held = {job_id for job_id, _lease in parts.registry.held}
        assert set(quick_ids) <= held
        assert sorted(job.id for job, _at in parts.registry.buffer) == sorted(quick_ids)
        gate.set()
        await wait_until(lambda: _all_done(store, quick_ids), within=60)
    finally:
        gate.set()
        await worker.stop()


async def _buffered(parts: Any, n: int) -> bool:
    return len(parts.registry.buffer) == n


async def _clogged(parts: Any) -> bool:
    buffer = parts.registry.buffer
    return bool(buffer) and time.monotonic() - min(at for _j, at in buffer) > BUFFER_WAIT_LIMIT


async def _stopped_prefetching(parts: Any) -> bool:
    return bool(parts.fetcher._no_prefetch_until)


async def _all_done(store: PgJobStore, ids: list[int]) -> bool:
    return all([await status_of(store, i) == "DONE" for i in ids])
