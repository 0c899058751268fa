"""What a claim and a completion cost the server per row, and what each part of them
adds: `EXPLAIN (ANALYZE, TIMING OFF)` of claims of 500 among 300,000 READY jobs, each
variant in a transaction rolled back, interleaved, the table vacuumed every few rounds.

    python docs/bench/row_costs.py postgresql://postgres@127.0.0.1:5432 [ROUNDS]

It creates and drops a database `bench_row_costs` on that server.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from pqrun import PgJobStore
from pqrun._store.queries import query

SERVER = sys.argv[1].rstrip("/")
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 24
DSN = f"{SERVER}/bench_row_costs"
CLAIM = 500


async def explain(conn: asyncpg.Connection, sql: str, *args: Any) -> float:
    plan = json.loads(
        await conn.fetchval("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) " + sql, *args)
    )[0]
    return float(plan["Execution Time"])


async def main() -> None:
    admin = await asyncpg.connect(f"{SERVER}/postgres")
    await admin.execute("DROP DATABASE IF EXISTS bench_row_costs")
    await admin.execute("CREATE DATABASE bench_row_costs")
    try:
        setup = PgJobStore(DSN)
        await setup.setup()
        await setup.close()
        conn = await asyncpg.connect(DSN)
        try:
            await measure(conn)
        finally:
            await conn.close()
    finally:
        await admin.execute("DROP DATABASE IF EXISTS bench_row_costs")
        await admin.close()


async def measure(conn: asyncpg.Connection) -> None:
    await conn.execute("INSERT INTO jobs (job_type) SELECT 'noop' FROM generate_series(1, 300000)")
    await conn.execute("VACUUM ANALYZE jobs")
    pickup = query("pickup")
    claim_args = ("w1", None, CLAIM, False)
    # The same claim returning only the id (and its last parameter, unused).
    returning_id = pickup[: pickup.index("RETURNING")] + "RETURNING j.id, $4::boolean\n"
    times: dict[str, list[float]] = {}

    async def variant(name: str, before: list[str], run: Callable[[], Awaitable[float]]) -> None:
        transaction = conn.transaction()
        await transaction.start()
        try:
            for statement in before:
                await conn.execute(statement)
            times.setdefault(name, []).append(await run() / CLAIM * 1000)
        finally:
            await transaction.rollback()

    async def claim_then(completion: str) -> float:
        rows = await conn.fetch(pickup, *claim_args)
        ids = [row["id"] for row in rows]
        claims = (ids, ["w1"] * len(ids), [r["attempts"] for r in rows])
        leases = [r["lease_id"] for r in rows]
        if completion == "delete_done_batch":
            return await explain(conn, query(completion), *claims, leases)
        return await explain(
            conn, query(completion), *claims, leases, [None] * len(ids), [1] * len(ids)
        )

    no_running = ["DROP INDEX jobs_running"]
    no_finished = ["DROP INDEX jobs_finished"]
    for round_number in range(ROUNDS):
        await variant("claim", [], lambda: explain(conn, pickup, *claim_args))
        await variant(
            "claim, returning the id only", [], lambda: explain(conn, returning_id, *claim_args)
        )
        await variant(
            "claim without jobs_running", no_running, lambda: explain(conn, pickup, *claim_args)
        )
        await variant("completion: mark_done_batch", [], lambda: claim_then("mark_done_batch"))
        await variant(
            "completion without jobs_finished", no_finished, lambda: claim_then("mark_done_batch")
        )
        await variant("completion: delete_done_batch", [], lambda: claim_then("delete_done_batch"))
        if round_number % 4 == 3:
            await conn.execute("VACUUM jobs")
    for name, per_row in times.items():
        median = statistics.median(per_row)
        print(f"{name:36s} median {median:.2f} µs a row (least {min(per_row):.2f})")


asyncio.run(main())
