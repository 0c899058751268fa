"""A worker process for tests/test_liveness.py: runs `slow` jobs and records every run.

python -m tests.liveness_worker DSN WORKER_ID MODE

Each run writes its start and its end on a connection of the process's own (not the
store's pool), so that overlapping runs of one job can be measured afterwards. MODE
`pool`: each handler holds one of the store's pooled connections while it runs, and the
pool is smaller than the concurrency, so handlers hold every pooled connection at once.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from datetime import timedelta
from typing import Any

import asyncpg

from pqrun import IdlePollPolicy, JobContext, LoopErrorPolicy, PgJobStore, Worker

STALE_SECONDS = 2.0
CONCURRENCY = 4


async def main(dsn: str, worker_id: str, mode: str) -> None:
    runs = await asyncpg.create_pool(dsn, min_size=1, max_size=CONCURRENCY)

    async def slow(ctx: JobContext) -> str:
        run_id = await runs.fetchval(
            "INSERT INTO liveness_runs (job_id, worker) VALUES ($1, $2) RETURNING id",
            ctx.job.id,
            worker_id,
        )
        hold = float(ctx.job.payload["hold"])
        if mode == "pool":
            async with ctx.store.connection():
                await asyncio.sleep(hold)
        else:
            await asyncio.sleep(hold)
        await runs.execute(
            "UPDATE liveness_runs SET ended_at = clock_timestamp() WHERE id = $1", run_id
        )
        return "ok"

    extra: dict[str, Any] = {"max_size": 2} if mode == "pool" else {}
    store = PgJobStore(dsn, **extra)
    worker = Worker(
        store=store,
        handlers={"slow": slow},
        concurrency=CONCURRENCY,
        worker_id=worker_id,
        default_stale_after=timedelta(seconds=STALE_SECONDS),
        reap_stale_every_seconds=0.3,
        idle_policy=IdlePollPolicy(0.05, 0.2),
        loop_error_policy=LoopErrorPolicy(0.1, 0.5),
        prefetch=0,
    )
    try:
        await worker.run()
    finally:
        await runs.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format=f"{sys.argv[2]} %(levelname)s %(message)s")
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
