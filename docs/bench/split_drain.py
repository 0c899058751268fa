"""One timed drain: 20,000 no-op jobs, then Worker(concurrency=10).drain() alone.

Prints "<jobs/s> <worker CPU µs per job>". Usage: python split_drain.py DSN
(the database is set up with store.setup() and its jobs table emptied first).
"""

from __future__ import annotations

import asyncio
import sys
import time

from pqrun import JobContext, PgJobStore, Worker

JOBS = 20_000


async def noop(ctx: JobContext) -> None:
    return None


async def main(dsn: str) -> None:
    store = PgJobStore(dsn)
    await store.setup()
    async with store.connection() as conn:
        await conn.execute("TRUNCATE jobs")
    for _ in range(0, JOBS, 1000):
        await store.enqueue_many([{"job_type": "noop"} for _ in range(1000)])
    worker = Worker(store, {"noop": noop}, concurrency=10)
    cpu, wall = time.process_time(), time.perf_counter()
    done = await worker.drain()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await store.close()
    print(f"{done / wall:.0f} {cpu * 1e6 / done:.1f}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
