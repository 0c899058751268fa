"""Many workers on one queue: every job runs exactly once, none is left behind."""

from __future__ import annotations

import asyncio

import asyncpg

from pqrun import IdlePollPolicy, JobContext, PgJobStore, Worker

from .helpers import counts


async def test_four_workers_of_eight_run_each_of_2000_jobs_once(
    dsn: str, store: PgJobStore, conn: asyncpg.Connection
) -> None:
    await conn.execute("DROP TABLE IF EXISTS runs")
    # A second run of any job violates the key, fails that run, and shows in the counts.
    await conn.execute("CREATE TABLE runs (job_id bigint PRIMARY KEY, worker text NOT NULL)")
    await conn.execute(
        "INSERT INTO jobs (job_type, payload) "
        "SELECT 'count', jsonb_build_object('n', n) FROM generate_series(1, 2000) AS n"
    )

    async def record_run(ctx: JobContext) -> None:
        async with ctx.store.transaction() as tx:
            await tx.execute("INSERT INTO runs VALUES ($1, $2)", ctx.job.id, ctx.worker_id)

    stores = [PgJobStore(dsn) for _ in range(4)]
    workers = [
        Worker(
            store=s,
            handlers={"count": record_run},
            concurrency=8,
            worker_id=f"worker-{i}",
            idle_policy=IdlePollPolicy(0.01, 0.05),
            enable_reaper=False,
        )
        for i, s in enumerate(stores)
    ]
    try:
        processed = await asyncio.wait_for(
            asyncio.gather(*(w.drain() for w in workers)), timeout=120
        )
    finally:
        for s in stores:
            await s.close()
    assert sum(processed) == 2000
    assert await counts(conn) == {"DONE": 2000}
    assert await conn.fetchval("SELECT count(*) FROM runs") == 2000
    assert await conn.fetchval("SELECT max(attempts) FROM jobs") == 1
    # The work was shared, not done by one worker while the others idled.
    per_worker = await conn.fetch("SELECT worker, count(*) FROM runs GROUP BY worker")
    assert len(per_worker) == 4
    await conn.execute("DROP TABLE runs")
