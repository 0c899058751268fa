"""A worker process for tests/test_pause.py: runs job types `a` and `b` and records runs.

python -m tests.pause_worker DSN WORKER_ID

Each run is recorded in `pause_runs` on a connection of the process's own. A job whose
payload has `"gate": true` holds its slot until `pause_gate.open` is true. The idle poll
is IDLE_POLL_SECONDS: the worker claims when a notification wakes it (an insert, a
resume), else only that rarely.
"""

from __future__ import annotations

import asyncio
import logging
import sys

import asyncpg

from pqrun import IdlePollPolicy, JobContext, LoopErrorPolicy, PgJobStore, Worker

#: Longer than any wait of test_pause.py that counts on a wake-up.
IDLE_POLL_SECONDS = 60.0


async def main(dsn: str, worker_id: str) -> None:
    runs = await asyncpg.create_pool(dsn, min_size=1, max_size=4)

    async def record(ctx: JobContext) -> str:
        await runs.execute(
            "INSERT INTO pause_runs (job_id, job_type, worker) VALUES ($1, $2, $3)",
            ctx.job.id,
            ctx.job.job_type,
            worker_id,
        )
        # The gate is a row another process opens: polled, no event to wait on.
        while ctx.job.payload.get("gate") and not await runs.fetchval(  # noqa: ASYNC110
            "SELECT open FROM pause_gate"
        ):
            await asyncio.sleep(0.05)
        return "ok"

    worker = Worker(
        store=PgJobStore(dsn),
        handlers={"a": record, "b": record},
        concurrency=4,
        worker_id=worker_id,
        idle_policy=IdlePollPolicy(IDLE_POLL_SECONDS, IDLE_POLL_SECONDS),
        loop_error_policy=LoopErrorPolicy(0.1, 0.5),
        prefetch=0,
    )
    try:
        await worker.run()
    finally:
        await runs.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format=f"{sys.argv[2]} %(levelname)s %(message)s")
    asyncio.run(main(sys.argv[1], sys.argv[2]))
