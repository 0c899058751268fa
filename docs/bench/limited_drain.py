"""What a limited job type costs: drains of 20,000 no-op jobs, one worker of 16 slots,
without limits and with limits that never bind (so only the claiming differs).

    python docs/bench/limited_drain.py postgresql://postgres@127.0.0.1:5432/bench_pqrun

It truncates the jobs table of that database: give it a scratch one.
"""

from __future__ import annotations

import asyncio
import sys
import time

import asyncpg

from pqrun import Handler, JobContext, PgJobStore, Worker

DSN = sys.argv[1]


async def noop(ctx: JobContext) -> None:
    return None


async def run(label: str, handler: Handler, jobs: int = 20000) -> None:
    conn = await asyncpg.connect(DSN)
    await conn.execute("TRUNCATE jobs, job_rate_limits")
    await conn.execute(
        "INSERT INTO jobs (job_type) SELECT 'noop' FROM generate_series(1, $1)", jobs
    )
    await conn.execute("VACUUM ANALYZE jobs")
    await conn.close()
    store = PgJobStore(DSN)
    worker = Worker(store=store, handlers={"noop": handler}, concurrency=16, enable_reaper=False)
    start = time.perf_counter()
    done = await worker.drain()
    took = time.perf_counter() - start
    await store.close()
    print(f"{label}: {done / took:,.0f} jobs/s")


async def main() -> None:
    store = PgJobStore(DSN)
    await store.setup()
    await store.close()
    for _ in range(2):
        await run("unlimited, concurrency 16", Handler(noop))
        await run("concurrency_limit=1000 (not binding)", Handler(noop, concurrency_limit=1000))
        await run("rate_limit=100000/s (not binding)", Handler(noop, rate_limit=100000))


if __name__ == "__main__":
    asyncio.run(main())
