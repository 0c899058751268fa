"""pqrun through PgBouncer 1.21 or later with ``max_prepared_statements``: named prepared
statements kept across server connections, so a store may keep its statement cache
(``statement_cache_size``) through the pooler. Debian 12 has PgBouncer 1.18; .ci/run
builds 1.24.1 from Debian's source package (tests/pgbouncer.py NEWER_SEARCH_PATHS)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from urllib.parse import urlsplit

import asyncpg
import pytest

from pqrun import IdlePollPolicy, JobContext, PgJobStore, Worker

from .helpers import wait_until
from .pgbouncer import PgBouncer, find_pgbouncer_with_prepared_statements

NEWER = find_pgbouncer_with_prepared_statements()
pytestmark = pytest.mark.skipif(
    NEWER is None, reason="no PgBouncer 1.21 or later (.ci/run builds one)"
)


@pytest.fixture(scope="module")
def bouncer(server_dsn: str) -> Iterator[PgBouncer]:
    """Transaction mode, two server connections per database and user, prepared
    statements tracked by the bouncer."""
    parts = urlsplit(server_dsn)
    with PgBouncer(
        parts.hostname or "127.0.0.1",
        parts.port or 5432,
        users=(parts.username or "postgres",),
        default_pool_size=2,
        max_prepared_statements=200,
        executable=NEWER,
    ) as running:
        assert running.version >= (1, 21)
        yield running


@pytest.mark.parametrize("statement_cache_size", [0, 100])
async def test_jobs_run_once_through_a_bouncer_that_keeps_prepared_statements(
    bouncer: PgBouncer,
    dsn: str,
    store: PgJobStore,
    conn: asyncpg.Connection,
    statement_cache_size: int,
) -> None:
    parts = urlsplit(dsn)
    pooled_dsn = bouncer.dsn(parts.path.lstrip("/"), user=parts.username or "postgres")
    # More clients than server connections: a statement prepared on one server
    # connection is run by a transaction the bouncer gives another.
    through = PgJobStore(
        pooled_dsn,
        pooler=True,
        direct_dsn=dsn,
        max_size=6,
        statement_cache_size=statement_cache_size,
    )
    ran: list[int] = []

    async def job(ctx: JobContext) -> int:
        ran.append(ctx.job.id)
        await asyncio.sleep(0)
        return ctx.job.id

    try:
        ids = await asyncio.gather(*(through.enqueue("job", {"n": n}) for n in range(120)))
        worker = Worker(
            through,
            {"job": job},
            concurrency=6,
            idle_policy=IdlePollPolicy(base_seconds=0.2, max_seconds=0.5),
        )
        async with worker.lifespan(None):

            async def all_done() -> bool:
                done = await conn.fetchval(
                    "SELECT count(*) FROM jobs WHERE id = ANY($1) AND status = 'DONE'", ids
                )
                return bool(done == len(ids))

            await wait_until(all_done, within=120)
            late = await through.enqueue("job", {})
            assert (await through.wait(late, timeout=60)).result == late
    finally:
        await through.close()
    assert sorted(ran) == sorted([*ids, late])  # each job ran once
    attempts = await conn.fetch("SELECT DISTINCT attempts FROM jobs")
    assert [row["attempts"] for row in attempts] == [1]
