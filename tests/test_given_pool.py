"""PgJobStore(pool=...): pqrun on an asyncpg pool the application owns."""

from __future__ import annotations

import traceback
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest

from pqrun import DatabaseUnavailable, JobContext, PgJobStore, Worker
from pqrun._store.own_connections import parts_given_by

from .helpers import QUICK_POLICIES


@pytest.fixture
async def app_pool(dsn: str, store: PgJobStore) -> AsyncIterator[asyncpg.Pool]:
    """The application's own pool (``store``: the jobs table emptied first)."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


async def session_settings(pool: asyncpg.Pool) -> tuple[str, str]:
    """search_path and plan_cache_mode of every connection the pool holds."""
    seen = set()
    conns = [await pool.acquire() for _ in range(pool.get_size())]
    try:
        for conn in conns:
            seen.add(
                (
                    await conn.fetchval("SHOW search_path"),
                    await conn.fetchval("SHOW plan_cache_mode"),
                )
            )
    finally:
        for conn in conns:
            await pool.release(conn)
    assert len(seen) == 1, seen
    return seen.pop()


async def test_a_store_on_the_apps_pool_runs_jobs_and_leaves_the_pool_as_it_was(
    app_pool: asyncpg.Pool,
) -> None:
    before = await session_settings(app_pool)
    store = PgJobStore(pool=app_pool)
    seen: list[int] = []

    async def record(ctx: JobContext) -> None:
        seen.append(ctx.job.payload["n"])

    async with store:
        ids = [await store.enqueue("record", {"n": n}) for n in range(5)]
        await store.enqueue_many([{"job_type": "record", "payload": {"n": 5}}])
        async with store.transaction() as conn:  # the block's connection is the pool's
            await store.enqueue("record", {"n": 6})
            assert await conn.fetchval("SELECT count(*) FROM jobs") == 7
        await Worker(store, {"record": record}, **QUICK_POLICIES).drain()
        assert sorted(seen) == list(range(7))
        job = await store.get_job(ids[0])
        assert job is not None
        assert job.status.value == "DONE"
    # Closing the store leaves the application's pool open, with its settings.
    assert not app_pool.is_closing()
    assert await app_pool.fetchval("SELECT count(*) FROM jobs WHERE status = 'DONE'") == 7
    assert await session_settings(app_pool) == before


async def test_a_schema_on_the_apps_pool_holds_for_each_statement_and_is_put_back(
    dsn: str, app_pool: asyncpg.Pool, schemas: Callable[[], str]
) -> None:
    billing = schemas()
    await PgJobStore(dsn, schema=billing).setup()
    path_before, _ = await session_settings(app_pool)
    public_before = await app_pool.fetchval("SELECT count(*) FROM public.jobs")
    store = PgJobStore(pool=app_pool, schema=billing)
    done: list[int] = []

    async def record(ctx: JobContext) -> None:
        done.append(ctx.job.id)

    async with app_pool.acquire() as app_conn, store:
        await app_conn.execute("CREATE TEMP TABLE orders (id int)")
        # The app's own transaction, with an enqueue in it: its tables are found as
        # always, and the job goes to the store's schema.
        async with app_conn.transaction():
            await app_conn.execute("INSERT INTO orders VALUES (1)")
            await store.enqueue("record", {}, conn=app_conn)
            assert await app_conn.fetchval("SHOW search_path") == path_before
    async with store:
        job_id = await store.enqueue("record", {})
        assert await app_pool.fetchval(f'SELECT count(*) FROM "{billing}".jobs') == 2
        assert await app_pool.fetchval("SELECT count(*) FROM public.jobs") == public_before
        # Between pqrun's statements, the pool's connections keep their own search_path.
        assert (await session_settings(app_pool))[0] == path_before
        await Worker(store, {"record": record}, **QUICK_POLICIES).drain()
        assert len(done) == 2
        assert job_id in done
        job = await store.get_job(job_id)
        assert job is not None
        assert job.status.value == "DONE"
    assert (await session_settings(app_pool))[0] == path_before


async def test_pool_settings_beside_a_pool_are_refused_with_where_they_belong(
    app_pool: asyncpg.Pool,
) -> None:
    with pytest.raises(
        ValueError, match=r"max_inactive_connection_lifetime to asyncpg\.create_pool"
    ):
        PgJobStore(pool=app_pool, max_inactive_connection_lifetime=5)
    with pytest.raises(TypeError, match="takes an asyncpg pool"):
        PgJobStore(pool="postgresql://localhost/db")  # type: ignore[arg-type]


async def test_a_closed_pool_is_named_as_the_cause(dsn: str) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    await pool.close()
    store = PgJobStore(pool=pool)
    with pytest.raises(
        DatabaseUnavailable, match=r"pool given to PgJobStore\(pool=...\) is closed"
    ):
        await store.enqueue("t", {})


async def test_no_password_of_the_pool_shows_in_the_store_or_its_errors(dsn: str) -> None:
    secret = "pool-secret-0xdeadbeef"
    pool = asyncpg.create_pool(
        "postgresql://nobody@127.0.0.1:1/db", password=secret, min_size=0, max_size=1
    )
    await pool  # min_size=0: opens no connection
    try:
        store = PgJobStore(pool=pool)
        assert secret not in repr(store)
        with pytest.raises(DatabaseUnavailable) as raised:
            await store.enqueue("t", {})
        text = str(raised.value) + repr(raised.value.__cause__)
        assert secret not in text
        assert "127.0.0.1:1" in text
    finally:
        await pool.close()


async def test_a_pool_that_connects_its_own_way_needs_the_dsn_beside_it(dsn: str) -> None:
    async def connect(*args: Any, **kwargs: Any) -> asyncpg.Connection:
        return await asyncpg.connect(dsn)

    pool = asyncpg.create_pool(connect=connect, min_size=0, max_size=1)
    with pytest.raises(ValueError, match=r"pass the DSN too, PgJobStore\(dsn="):
        PgJobStore(pool=pool)
    assert PgJobStore(dsn=dsn, pool=pool).dsn == dsn


async def test_own_connections_to_another_database_than_the_pool_are_refused(
    dsn: str, server_dsn: str, app_pool: asyncpg.Pool
) -> None:
    elsewhere = PgJobStore(dsn=server_dsn, pool=app_pool)  # the server's default database
    try:
        await elsewhere.start()
        with pytest.raises(DatabaseUnavailable, match="must name the same server and database"):
            await elsewhere.dedicated_connection("the heartbeat connection")
    finally:
        await elsewhere.close()


async def test_the_pools_password_never_shows_beside_a_dsn() -> None:
    secret = "k9[Tr0ub4dor]"
    pool = asyncpg.create_pool(
        f"postgresql://postgres:{secret}@127.0.0.1:1/db", min_size=0, max_size=1
    )
    store = PgJobStore(dsn="postgresql://postgres@127.0.0.1:1/db", pool=pool)
    with pytest.raises(DatabaseUnavailable) as raised:
        await store.enqueue("t", {})
    text = str(raised.value) + "".join(traceback.format_exception(raised.value))
    for piece in ("Tr0ub4dor", "k9[Tr"):
        assert piece not in text


def test_pool_sizes_beside_a_pool_are_refused(app_pool: asyncpg.Pool) -> None:
    with pytest.raises(ValueError, match=r"size it with asyncpg\.create_pool"):
        PgJobStore(pool=app_pool, max_size=50)


async def test_a_jobs_table_made_anew_does_not_lock_out_a_running_store(
    dsn: str, app_pool: asyncpg.Pool, schemas: Callable[[], str]
) -> None:
    billing = schemas()
    await PgJobStore(dsn, schema=billing).setup()
    store = PgJobStore(pool=app_pool, schema=billing)
    try:
        await store.start()
        # setup() again after a drop, or a restore: the same queue, a new table.
        await app_pool.execute(f'DROP SCHEMA "{billing}" CASCADE')
        await PgJobStore(dsn, schema=billing).setup()
        own = await store.dedicated_connection("the heartbeat connection")
        await own.close()
    finally:
        await store.close()


def test_a_direct_dsn_takes_only_what_it_does_not_say_from_keywords() -> None:
    assert parts_given_by("postgresql://app@db.internal/jobs") == {"host", "user", "database"}
    assert parts_given_by("postgresql://app:pw@db.internal:5433/jobs") == {
        "host",
        "port",
        "user",
        "password",
        "passfile",
        "database",
    }
    assert "password" in parts_given_by("host=db user=app")  # not a URL: all of it
