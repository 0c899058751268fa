"""What waiting jobs cost a claim, and how soon a dependent runs after its last dependency.

1. The claim of 100 jobs (the workers' statement, rolled back each time) on a table of
   10,000 READY jobs, then again once 100,000 WAITING jobs (each depending on a RUNNING
   job) sit beside them: median and p90 of 200 claims each.
2. Chains of two jobs (b depends on a) run by one worker whose idle polls are a minute
   apart, so only the notification of the released dependent can wake it: the time
   from a's end (finished_at) to b's claim (locked_at), both by the database's clock,
   over 200 chains run one after another.

Usage: python workflows.py DSN   (a scratch database: its jobs table is emptied)
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

import pqrun
from pqrun import IdlePollPolicy, JobContext, Worker
from pqrun._store.moves import PICKUP

CLAIMS = 200
CHAIN_DEADLINE = 60.0
CHAINS = 200


async def claim_times(store: pqrun.PgJobStore) -> list[float]:
    times = []
    async with store.connection() as conn:
        for _ in range(CLAIMS):
            transaction = conn.transaction()
            await transaction.start()
            began = time.perf_counter()
            rows = await conn.fetch(PICKUP, "bench", None, 100, False)
            times.append((time.perf_counter() - began) * 1000)
            await transaction.rollback()
            assert len(rows) == 100
    return times


def summary(times: list[float]) -> str:
    ordered = sorted(times)
    p90 = ordered[int(len(ordered) * 0.9)]
    return f"median {statistics.median(ordered):.2f} ms, p90 {p90:.2f} ms"


async def main(dsn: str) -> None:
    store = pqrun.PgJobStore(dsn)
    await store.setup()
    async with store.connection() as conn:
        await conn.execute("TRUNCATE jobs RESTART IDENTITY")
        await conn.execute("INSERT INTO jobs (job_type) SELECT 't' FROM generate_series(1, 10000)")
        await conn.execute("ANALYZE jobs")
    print(f"claim of 100, no WAITING job:       {summary(await claim_times(store))}")
    async with store.connection() as conn:
        parent = await conn.fetchval(
            "INSERT INTO jobs (job_type, status, locked_by, locked_at, attempts) "
            "VALUES ('p', 'RUNNING', 'elsewhere', now(), 1) RETURNING id"
        )
        await conn.execute(
            "INSERT INTO jobs (job_type, depends_on) "
            "SELECT 'w', ARRAY[$1::bigint] FROM generate_series(1, 100000)",
            parent,
        )
        await conn.execute("ANALYZE jobs")
        waiting = await conn.fetchval("SELECT count(*) FROM jobs WHERE status = 'WAITING'")
    print(f"claim of 100, {waiting:,} WAITING jobs: {summary(await claim_times(store))}")

    async with store.connection() as conn:
        # No worker of an earlier run in the registry: a notification could name it.
        await conn.execute("TRUNCATE jobs, job_workers RESTART IDENTITY")

    async def noop(ctx: JobContext) -> None:
        return None

    worker = Worker(
        store,
        {"a": noop, "b": noop},
        concurrency=1,
        idle_policy=IdlePollPolicy(base_seconds=60, max_seconds=60),
    )
    await worker.start()
    try:
        for _ in range(CHAINS):
            a = await store.enqueue("a")
            b = await store.enqueue("b", depends_on=[a])
            deadline = time.monotonic() + CHAIN_DEADLINE
            while (await store.get_job(b)).status.value != "DONE":  # type: ignore[union-attr]
                if time.monotonic() > deadline:
                    raise SystemExit(f"chain {a} -> {b} did not finish: {await store.get_job(b)}")
                await asyncio.sleep(0.002)
    finally:
        await worker.stop()
    async with store.connection() as conn:
        gaps = await conn.fetch(
            "SELECT extract(epoch FROM b.locked_at - a.finished_at) * 1000 AS ms "
            "FROM jobs AS b JOIN jobs AS a ON a.id = b.depends_on[1] WHERE b.job_type = 'b'"
        )
    print(
        f"last dependency's end -> dependent claimed ({CHAINS} chains): "
        f"{summary([row['ms'] for row in gaps])}"
    )
    await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
