"""docs/migrating.md: the stale-jobs query it gives instead of the earlier package's."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from pathlib import Path

import asyncpg

from pqrun import JobContext, PgJobStore, Worker

from .helpers import QUICK, status_of, wait_until

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<!-- stale-jobs-query: tests/test_migrating.py runs this query -->\n```sql\n"
# The earlier package's README: it lists any job that has run for 20 minutes.
OLD_QUERY = (
    "SELECT id, job_type, locked_at, locked_by FROM jobs "
    "WHERE status = 'RUNNING' AND locked_at < now() - interval '20 minutes'"
)


def stale_jobs_query(page: str) -> str:
    text = (ROOT / "docs" / page).read_text()
    match = re.search(re.escape(MARKER) + r"(.*?)```", text, re.DOTALL)
    assert match, f"docs/{page} has no stale-jobs query after its marker"
    return match.group(1)


def test_migrating_and_operations_give_the_same_query() -> None:
    assert stale_jobs_query("migrating.md") == stale_jobs_query("operations.md")


async def test_the_stale_jobs_query_lists_the_dead_and_not_the_long_running(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    query = stale_jobs_query("migrating.md")
    release = asyncio.Event()

    async def long_job(ctx: JobContext) -> str:
        await release.wait()
        return "finished"

    worker = Worker(
        store=store, handlers={"long": long_job}, default_stale_after=timedelta(seconds=2), **QUICK
    )
    live = await store.enqueue("long")
    await worker.start()
    try:

        async def held() -> bool:
            return bool(
                await conn.fetchval(
                    "SELECT $1 = ANY (held_jobs) FROM job_workers WHERE worker_id = $2",
                    live,
                    worker.worker_id,
                )
            )

        await wait_until(held)
        # As if it had run for an hour, its worker alive all along.
        await conn.execute(
            "UPDATE jobs SET locked_at = now() - interval '1 hour' WHERE id = $1", live
        )
        # A worker that is gone (no row in job_workers), and one whose last heartbeat,
        # listing its job, is an hour old.
        gone = await conn.fetchval(
            "INSERT INTO jobs (job_type, status, attempts, locked_by, locked_at, lease_id) "
            "VALUES ('other', 'RUNNING', 1, 'gone', now() - interval '1 hour', 1) RETURNING id"
        )
        frozen = await conn.fetchval(
            "INSERT INTO jobs (job_type, status, attempts, locked_by, locked_at, lease_id) "
            "VALUES ('other', 'RUNNING', 1, 'frozen', now() - interval '1 hour', 2) RETURNING id"
        )
        await conn.execute(
            "INSERT INTO job_workers (worker_id, host, pid, job_types, concurrency, "
            "heartbeat_at, held_jobs, held_leases, stale_after) VALUES ('frozen', 'h', 1, "
            "'{other}', 1, now() - interval '1 hour', ARRAY[$1::bigint], '{2}', '30 s')",
            frozen,
        )
        # A claim younger than the stale period is not stale yet, listed or not.
        young = await conn.fetchval(
            "INSERT INTO jobs (job_type, status, attempts, locked_by, locked_at, lease_id) "
            "VALUES ('other', 'RUNNING', 1, 'gone', now(), 3) RETURNING id"
        )

        assert [row["id"] for row in await conn.fetch(query)] == [gone, frozen]
        assert young not in [row["id"] for row in await conn.fetch(query)]
        # The earlier query takes the healthy long job for a stale one.
        assert live in [row["id"] for row in await conn.fetch(OLD_QUERY)]

        release.set()

        async def done() -> bool:
            return await status_of(store, live) == "DONE"

        await wait_until(done)
    finally:
        release.set()
        await worker.stop()
