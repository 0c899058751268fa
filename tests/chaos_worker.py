"""A worker process for tests/test_chaos.py: runs `chaos` jobs and records every run.

python -m tests.chaos_worker DSN WORKER_ID
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
from datetime import timedelta

from pqrun import BackoffPolicy, IdlePollPolicy, JobContext, LoopErrorPolicy, PgJobStore, Worker


async def run_and_record(ctx: JobContext) -> str:
    # Each run records its start and its end in their own statements, so a run cut off by
    # a kill shows as started and never ended.
    async with ctx.store.connection() as conn:
        run_id = await conn.fetchval(
            "INSERT INTO chaos_runs (job_id, lease_id, worker) VALUES ($1, $2, $3) RETURNING id",
            ctx.job.id,
            ctx.job.lease_id,
            ctx.worker_id,
        )
    await asyncio.sleep(random.uniform(0.02, 0.1))
    async with ctx.store.connection() as conn:
        await conn.execute(
            "UPDATE chaos_runs SET ended_at = clock_timestamp() WHERE id = $1", run_id
        )
    return "ok"


async def main(dsn: str, worker_id: str) -> None:
    store = PgJobStore(dsn, connect_timeout=2, statement_timeout=5)
    worker = Worker(
        store=store,
        handlers={"chaos": run_and_record},
        concurrency=8,
        worker_id=worker_id,
        default_stale_after=timedelta(seconds=2),
        reap_stale_every_seconds=0.5,
        backoff=BackoffPolicy([timedelta(milliseconds=200)]),
        idle_policy=IdlePollPolicy(0.05, 0.2),
        loop_error_policy=LoopErrorPolicy(0.1, 0.5),
        shutdown_grace=1,
        shutdown_timeout=3,
    )
    await worker.run()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format=f"{sys.argv[2]} %(levelname)s %(message)s")
    asyncio.run(main(sys.argv[1], sys.argv[2]))
