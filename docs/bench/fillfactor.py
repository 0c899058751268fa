"""What the jobs table's fillfactor changes: write-ahead log per job, and the space kept
DONE rows take, for empty and 1 KB payloads (docs/benchmarks.md, docs/operations.md).

    python docs/bench/fillfactor.py postgresql://postgres@127.0.0.1:5432 [FILLFACTOR ...]

WAL: 100,000 jobs queued, a checkpoint, then 40 claims of 500 (pqrun's own pickup) and
their batch completions (mark_done_batch), each statement's WAL read from
pg_current_wal_insert_lsn(). Space: a steady queue (2,000 jobs enqueued, drained the same
way, vacuumed every fifth round, 20 rounds), then the table's size per DONE row kept.
It creates and drops a database `bench_fillfactor` on that server (CHECKPOINT needs a
superuser or pg_checkpoint).
"""

from __future__ import annotations

import asyncio
import sys

import asyncpg

from pqrun import PgJobStore
from pqrun._store.queries import query

SERVER = sys.argv[1].rstrip("/")
FILLFACTORS = [int(value) for value in sys.argv[2:]] or [100, 40]
DSN = f"{SERVER}/bench_fillfactor"
PAYLOADS = (0, 1000)
CLAIM = 500

QUEUE = (
    "INSERT INTO jobs (job_type, payload) "
    "SELECT 'noop', jsonb_build_object('d', repeat('x', $1::integer) || n) "
    "FROM generate_series(1, $2::integer) AS n"
)


async def claim_and_complete(conn: asyncpg.Connection) -> tuple[int, float, float]:
    """One claim and its completion: (jobs, claim WAL bytes, completion WAL bytes)."""
    before = await conn.fetchval("SELECT pg_current_wal_insert_lsn()")
    rows = await conn.fetch(query("pickup"), "w1", None, CLAIM, False)
    between = await conn.fetchval("SELECT pg_current_wal_insert_lsn()")
    claims = sorted((row["id"], row["attempts"], row["lease_id"]) for row in rows)
    await conn.fetch(
        query("mark_done_batch"),
        [job_id for job_id, _, _ in claims],
        ["w1"] * len(claims),
        [attempts for _, attempts, _ in claims],
        [lease for _, _, lease in claims],
        ["null"] * len(claims),
        [0] * len(claims),
    )
    after = await conn.fetchval("SELECT pg_current_wal_insert_lsn()")
    claim_wal = await conn.fetchval("SELECT pg_wal_lsn_diff($1, $2)", between, before)
    done_wal = await conn.fetchval("SELECT pg_wal_lsn_diff($1, $2)", after, between)
    return len(rows), float(claim_wal), float(done_wal)


async def fresh_table(fillfactor: int) -> asyncpg.Connection:
    admin = await asyncpg.connect(f"{SERVER}/postgres")
    try:
        await admin.execute("DROP DATABASE IF EXISTS bench_fillfactor")
        await admin.execute("CREATE DATABASE bench_fillfactor")
    finally:
        await admin.close()
    setup = PgJobStore(DSN)
    await setup.setup()
    await setup.close()
    conn = await asyncpg.connect(DSN, server_settings={"plan_cache_mode": "force_custom_plan"})
    await conn.execute(f"ALTER TABLE jobs SET (fillfactor = {int(fillfactor)})")
    return conn


async def wal_per_job(fillfactor: int, payload: int) -> tuple[float, float]:
    conn = await fresh_table(fillfactor)
    try:
        await conn.execute(QUEUE, payload, 100_000)
        await conn.execute("VACUUM ANALYZE jobs")
        await conn.execute("CHECKPOINT")
        jobs = claim_wal = done_wal = 0.0
        for _ in range(40):
            claimed, claim_bytes, done_bytes = await claim_and_complete(conn)
            jobs, claim_wal, done_wal = (
                jobs + claimed,
                claim_wal + claim_bytes,
                done_wal + done_bytes,
            )
        return claim_wal / jobs, done_wal / jobs
    finally:
        await conn.close()


async def space_per_done_row(fillfactor: int, payload: int) -> float:
    conn = await fresh_table(fillfactor)
    try:
        for round_number in range(20):
            await conn.execute(QUEUE, payload, 2000)
            while (await claim_and_complete(conn))[0]:
                pass
            if round_number % 5 == 4:
                await conn.execute("VACUUM jobs")
        await conn.execute("VACUUM jobs")
        size = await conn.fetchval("SELECT pg_relation_size('jobs')")
        kept = await conn.fetchval("SELECT count(*) FROM jobs")
        return float(size) / float(kept)
    finally:
        await conn.close()


async def main() -> None:
    try:
        for payload in PAYLOADS:
            for fillfactor in FILLFACTORS:
                claim, done = await wal_per_job(fillfactor, payload)
                space = await space_per_done_row(fillfactor, payload)
                print(
                    f"payload {payload:4d} B, fillfactor {fillfactor:3d}: "
                    f"WAL a job {claim + done:5.0f} B "
                    f"(claim {claim:4.0f}, completion {done:4.0f}); "
                    f"{space:4.0f} B of table a kept DONE row"
                )
    finally:
        admin = await asyncpg.connect(f"{SERVER}/postgres")
        try:
            await admin.execute("DROP DATABASE IF EXISTS bench_fillfactor")
        finally:
            await admin.close()


asyncio.run(main())
