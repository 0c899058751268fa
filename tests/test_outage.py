"""A real outage: PostgreSQL is stopped under a running worker, then started again."""

from __future__ import annotations

import asyncio
import logging

import pytest

from pqrun import (
    DatabaseUnavailable,
    IdlePollPolicy,
    JobContext,
    JobStatus,
    LoopErrorPolicy,
    PgJobStore,
    Worker,
)
from pqrun._localpg import ThrowawayCluster

from .helpers import wait_until

pytestmark = pytest.mark.slow


async def test_worker_rides_out_a_database_restart(
    private_cluster: ThrowawayCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pqrun")
    in_handler = asyncio.Event()
    finish = asyncio.Event()
    runs: dict[int, int] = {}

    async def handler(ctx: JobContext) -> str:
        runs[ctx.job.id] = runs.get(ctx.job.id, 0) + 1
        if ctx.job.payload.get("hold"):
            in_handler.set()
            await finish.wait()
        return "done"

    store = PgJobStore(private_cluster.dsn, connect_timeout=1)
    worker = Worker(
        store=store,
        handlers={"t": handler},
        idle_policy=IdlePollPolicy(0.05, 0.2),
        loop_error_policy=LoopErrorPolicy(0.1, 0.4),
        enable_reaper=False,
    )
    await worker.start()
    try:
        held = await store.enqueue("t", {"hold": True})
        await asyncio.wait_for(in_handler.wait(), 60)

        await asyncio.to_thread(private_cluster.stop)
        finish.set()  # the handler returns while the database is down
        with pytest.raises(DatabaseUnavailable, match=r"127\.0\.0\.1"):
            await store.enqueue("t")
        await asyncio.sleep(2)
        outage_lines = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(outage_lines) == 1, [r.getMessage() for r in outage_lines]

        await asyncio.to_thread(private_cluster.start)
        fresh = await store.enqueue("t")

        async def both_done() -> bool:
            jobs = [await store.get_job(held), await store.get_job(fresh)]
            return all(j is not None and j.status is JobStatus.DONE for j in jobs)

        await wait_until(both_done, within=60)
        held_job = await store.get_job(held)
        assert held_job is not None
        assert held_job.attempts == 1  # the failed write was not counted as a failure
        assert runs == {held: 1, fresh: 1}
        assert any("works again" in r.getMessage() for r in caplog.records)
        assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
    finally:
        await worker.stop()
        await store.close()


async def test_an_outage_logs_no_asyncpg_traceback(
    private_cluster: ThrowawayCluster, caplog: pytest.LogCaptureFixture
) -> None:
    # asyncpg's pool retries its connection floor in the background during an outage,
    # logging a WARNING with a traceback each time: pqrun keeps them out of sight (DEBUG,
    # one line), since its own ERROR line already says the database is unreachable.
    caplog.set_level(logging.DEBUG, logger="asyncpg")
    caplog.set_level(logging.INFO, logger="pqrun")
    store = PgJobStore(private_cluster.dsn, connect_timeout=1, min_size=2)
    worker = Worker(
        store=store,
        handlers={"t": lambda ctx: None},
        idle_policy=IdlePollPolicy(0.05, 0.2),
        loop_error_policy=LoopErrorPolicy(0.1, 0.4),
        enable_reaper=False,
    )
    await worker.start()
    try:
        await store.enqueue("t")
        await asyncio.to_thread(private_cluster.stop)
        try:
            await asyncio.sleep(4)
        finally:
            await asyncio.to_thread(private_cluster.start)
        await store.enqueue("t")
    finally:
        await worker.stop()
        await store.close()
    from_asyncpg = [r for r in caplog.records if r.name.startswith("asyncpg")]
    assert [r for r in from_asyncpg if r.levelno >= logging.WARNING or r.exc_info] == []
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
