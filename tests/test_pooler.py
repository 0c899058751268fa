"""pqrun through a transaction pooler: a real PgBouncer (tests/pgbouncer.py) in front of
the test server, in transaction pooling mode, with nothing ignored or tuned for pqrun."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

import pqrun
from pqrun import (
    DatabaseUnavailable,
    IdlePollPolicy,
    JobContext,
    NotPermitted,
    PgJobStore,
    Schedule,
    Worker,
)

from .helpers import wait_until
from .pgbouncer import PgBouncer, find_pgbouncer
from .test_cli import pqrun_cmd

pytestmark = pytest.mark.skipif(find_pgbouncer() is None, reason="pgbouncer is not installed")


@pytest.fixture(scope="module")
def bouncer(server_dsn: str) -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode, one server connection per database and user: two
    clients' transactions share it, so a setting that leaked would show."""
    parts = urlsplit(server_dsn)
    with PgBouncer(
        parts.hostname or "127.0.0.1",
        parts.port or 5432,
        users=(parts.username or "postgres",),
        default_pool_size=1,
    ) as running:
        yield running


@pytest.fixture
def pooled_dsn(bouncer: PgBouncer, dsn: str) -> str:
    """The test database, through the bouncer."""
    parts = urlsplit(dsn)
    return bouncer.dsn(parts.path.lstrip("/"), user=parts.username or "postgres")


@pytest.fixture
async def pooled_store(pooled_dsn: str, dsn: str, store: PgJobStore) -> AsyncIterator[PgJobStore]:
    """A store through the bouncer, with a direct DSN for LISTEN (``store``: a clean table)."""
    through = PgJobStore(pooled_dsn, pooler=True, direct_dsn=dsn, max_size=4)
    try:
        yield through
    finally:
        await through.close()


async def settled(value: bool) -> bool:
    return value


async def test_without_pooler_true_the_refusal_names_the_fix(pooled_dsn: str) -> None:
    with pytest.raises(DatabaseUnavailable, match=r"pass pooler=True to PgJobStore"):
        await PgJobStore(pooled_dsn).start()


async def test_a_lost_prepared_statement_names_the_fix(pooled_dsn: str, store: PgJobStore) -> None:
    # A statement cache through the pooler (what pooler=True turns off): the statements
    # it prepared on one server connection are gone when the next transaction runs on
    # another. Here another client drops them from the bouncer's single server connection.
    cached = PgJobStore(pooled_dsn, pooler=True, statement_cache_size=100, min_size=1, max_size=1)
    try:
        await cached.enqueue("t", {})
        other = await asyncpg.connect(pooled_dsn, statement_cache_size=0)
        try:
            await other.execute("DEALLOCATE ALL")
        finally:
            await other.close()
        with pytest.raises(DatabaseUnavailable, match=r"statement_cache_size=0 to PgJobStore"):
            await cached.enqueue("t", {})
    finally:
        await cached.close()


async def test_jobs_chains_schedules_and_waits_through_the_pooler(
    pooled_store: PgJobStore, conn: asyncpg.Connection
) -> None:
    ran: list[str] = []

    async def first(ctx: JobContext) -> int:
        ran.append("first")
        return await ctx.store.enqueue("second", {"from": ctx.job.id})

    async def second(ctx: JobContext) -> str:
        ran.append("second")
        return "done"

    async def tick(ctx: JobContext) -> None:
        ran.append("tick")

    # Many enqueues at once share the bouncer's single server connection.
    ids = await asyncio.gather(*(pooled_store.enqueue("first", {"n": n}) for n in range(30)))
    worker = Worker(
        pooled_store,
        {"first": first, "second": second, "tick": tick},
        concurrency=4,
        # Polls once a minute: jobs that start sooner were woken by LISTEN (direct_dsn).
        idle_policy=IdlePollPolicy(base_seconds=60, max_seconds=60),
        schedules=[Schedule("tick", every=timedelta(seconds=1))],
    )
    async with worker.lifespan(None):
        for job_id in ids:
            assert (await pooled_store.wait(job_id, timeout=60)).status == "DONE"
        await wait_until(lambda: settled(ran.count("second") == 30), within=60)
        await wait_until(lambda: settled("tick" in ran), within=60)
        # A job enqueued now starts long before the next poll: LISTEN woke the worker.
        late = await pooled_store.enqueue("second", {})
        done = await pooled_store.wait(late, timeout=30)
        assert done.status == "DONE"
        assert done.result == "done"
    statuses = await conn.fetch("SELECT job_type, status, count(*) FROM jobs GROUP BY 1, 2")
    assert {(r["job_type"], r["status"]) for r in statuses} <= {
        ("first", "DONE"),
        ("second", "DONE"),
        ("tick", "DONE"),
        ("tick", "READY"),
    }


async def test_without_a_direct_dsn_workers_poll_waits_poll_and_vacuum_is_left(
    pooled_dsn: str, store: PgJobStore, caplog: pytest.LogCaptureFixture
) -> None:
    through = PgJobStore(pooled_dsn, pooler=True, max_size=4)

    async def job(ctx: JobContext) -> str:
        return "ok"

    caplog.set_level(logging.WARNING, logger="pqrun")
    worker = Worker(
        through, {"job": job}, idle_policy=IdlePollPolicy(base_seconds=0.05, max_seconds=0.2)
    )
    try:
        async with worker.lifespan(None):
            job_id = await through.enqueue("job", {})
            assert (await through.wait(job_id, timeout=60)).result == "ok"
        with pytest.raises(NotPermitted, match="direct_dsn"):
            await through.vacuum()
    finally:
        await through.close()
    said = [r.getMessage() for r in caplog.records if "LISTEN" in r.getMessage()]
    assert len(said) == 1, said
    assert "direct_dsn" in said[0]


async def test_without_a_direct_dsn_the_writers_settings_hold_for_its_statements_only(
    pooled_dsn: str, store: PgJobStore, caplog: pytest.LogCaptureFixture
) -> None:
    through = PgJobStore(pooled_dsn, pooler=True, max_size=4)
    # The bouncer has one server connection: the writer's and everyone else's
    # statements run on it in turn.
    writer = await through.dedicated_connection("a test", {"lock_timeout": "123ms"})
    try:
        db = through._db
        assert await db.fetchval("SHOW lock_timeout", conn=writer) == "123ms"
        assert await db.fetchval("SHOW lock_timeout") == "0"
        assert await db.fetchval("SHOW lock_timeout", conn=writer) == "123ms"
        beats = await through.dedicated_connection("the heartbeat connection", session=True)
        await beats.close()
        again = await through.dedicated_connection("the heartbeat connection", session=True)
        await again.close()
    finally:
        await writer.close()
        await through.close()
    # Liveness through the pooler can be starved by handlers: said once, naming the fix.
    said = [
        r.getMessage() for r in caplog.records if "goes through the transaction" in r.getMessage()
    ]
    assert len(said) == 1, said
    assert "direct_dsn" in said[0]


async def test_with_a_direct_dsn_a_workers_own_connections_skip_the_pooler(
    bouncer: PgBouncer, dsn: str, store: PgJobStore
) -> None:
    parts = urlsplit(dsn)
    # The pooler's port as a keyword, as apps often write it: it must not redirect the
    # connections that direct_dsn names.
    through = PgJobStore(
        f"postgresql://{parts.username or 'postgres'}@127.0.0.1/{parts.path.lstrip('/')}",
        port=bouncer.port,
        pooler=True,
        direct_dsn=dsn,
        max_size=4,
    )
    try:
        beats = await through.dedicated_connection(
            "a test", {"lock_timeout": "123ms"}, session=True
        )
        try:
            # Set at connect, not per transaction: this connection is not the pooler's.
            assert not getattr(beats, "per_transaction_settings", None)
            assert await beats.fetchval("SHOW lock_timeout") == "123ms"
            assert await beats.fetchval("SHOW plan_cache_mode") == "force_custom_plan"
        finally:
            await beats.close()
        # The outcome writer's goes through the pooler (a direct connection less per
        # worker): its settings hold per transaction.
        writer = await through.dedicated_connection("a test", {"lock_timeout": "123ms"})
        try:
            assert getattr(writer, "per_transaction_settings", None) == {"lock_timeout": "123ms"}
        finally:
            await writer.close()
        listening = await through.listen(lambda _payload: None)
        await listening.close()
    finally:
        await through.close()


async def test_a_schema_holds_through_the_pooler(
    pooled_dsn: str, dsn: str, schemas: Callable[[], str], conn: asyncpg.Connection
) -> None:
    billing = schemas()
    through = PgJobStore(pooled_dsn, pooler=True, direct_dsn=dsn, schema=billing, max_size=4)
    public_before = await conn.fetchval("SELECT count(*) FROM public.jobs")
    ran: list[int] = []

    async def job(ctx: JobContext) -> None:
        ran.append(ctx.job.id)

    try:
        await through.setup()  # ddl.sql in the schema, through the pooler
        job_id = await through.enqueue("job", {})
        assert await conn.fetchval(f'SELECT count(*) FROM "{billing}".jobs') == 1
        await Worker(through, {"job": job}).drain()
        assert ran == [job_id]
        assert (await through.wait(job_id, timeout=30)).status == "DONE"
        assert through.channel == f"pqrun:{billing}"
    finally:
        await through.close()
    assert await conn.fetchval("SELECT count(*) FROM public.jobs") == public_before


async def test_the_cli_and_the_dashboard_work_through_the_pooler(
    pooled_dsn: str, pooled_store: PgJobStore
) -> None:
    job_id = await pooled_store.enqueue("report", {})
    done = await asyncio.to_thread(
        pqrun_cmd, "status", DATABASE_URL=pooled_dsn, PQRUN_POOLER="true"
    )
    assert done.returncode == 0, done.stderr
    assert "report" in done.stdout
    app = FastAPI()
    app.mount("/jobs", pqrun.dashboard(pooled_store))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        page = await http.get(f"/jobs/jobs/{job_id}")
    assert page.status_code == 200
    assert "report" in page.text
