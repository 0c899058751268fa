"""PgJobStore(schema=...): queues in different schemas of one database never meet."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import pytest

from pqrun import PgJobStore, SchemaMissing, Worker
from pqrun.handlers import JobContext

from .helpers import QUICK, wait_until


async def test_two_schemas_share_a_database_without_seeing_each_other(
    dsn: str, schemas: Callable[[], str], conn: asyncpg.Connection
) -> None:
    billing, reports = schemas(), schemas()
    store_a = PgJobStore(dsn, schema=billing)
    store_b = PgJobStore(dsn, schema=reports)
    await store_a.setup()  # creates the schema, then the tables in it
    await store_b.setup()
    try:
        assert store_a.channel == f"pqrun:{billing}"
        assert store_b.channel == f"pqrun:{reports}"
        public_before = await conn.fetchval("SELECT count(*) FROM public.jobs")
        a_id = await store_a.enqueue("invoice", {"n": 1})
        b_id = await store_b.enqueue("invoice", {"n": 2})
        assert await conn.fetchval(f'SELECT count(*) FROM "{billing}".jobs') == 1
        assert await conn.fetchval(f'SELECT count(*) FROM "{reports}".jobs') == 1
        assert await conn.fetchval("SELECT count(*) FROM public.jobs") == public_before
        assert [j.payload for j in await store_a.list_jobs()] == [{"n": 1}]
        assert [j.payload for j in await store_b.list_jobs()] == [{"n": 2}]

        seen: list[tuple[str, object]] = []

        async def invoice(ctx: JobContext) -> None:
            seen.append((ctx.store.schema or "", ctx.job.payload["n"]))

        assert await Worker(store=store_a, handlers={"invoice": invoice}, **QUICK).drain() == 1
        assert seen == [(billing, 1)]
        assert (await store_a.get_job(a_id)).status == "DONE"  # type: ignore[union-attr]
        assert (await store_b.get_job(b_id)).status == "READY"  # type: ignore[union-attr]
    finally:
        await store_a.close()
        await store_b.close()


async def test_wakeups_go_to_the_listeners_of_their_own_schema_only(
    dsn: str, schemas: Callable[[], str]
) -> None:
    store_a = PgJobStore(dsn, schema=schemas())
    store_b = PgJobStore(dsn, schema=schemas())
    await store_a.setup()
    await store_b.setup()
    heard_a: list[str] = []
    heard_b: list[str] = []
    listen_a = await store_a.listen(heard_a.append)
    listen_b = await store_b.listen(heard_b.append)
    try:
        one = await store_a.enqueue("x")
        two = await store_a.enqueue_many([{"job_type": "x"}, {"job_type": "x"}])

        async def a_heard_both() -> bool:
            return len(heard_a) == 2

        await wait_until(a_heard_both)
        # B's own insert is delivered after A's (committed earlier): once B hears it,
        # anything of A's that leaked to B would have arrived first.
        b_id = await store_b.enqueue("x")

        async def b_heard() -> bool:
            return bool(heard_b)

        await wait_until(b_heard)
        await asyncio.sleep(0.05)
        assert heard_b == [f"jobs:1:{b_id}:{b_id}::x"]
        assert heard_a == [f"jobs:1:{one}:{one}::x", f"jobs:2:{min(two)}:{max(two)}::x"]
    finally:
        await listen_a.close()
        await listen_b.close()
        await store_a.close()
        await store_b.close()


async def test_enqueue_on_the_callers_own_connection_uses_the_stores_schema(
    dsn: str, schemas: Callable[[], str], conn: asyncpg.Connection
) -> None:
    name = schemas()
    store = PgJobStore(dsn, schema=name)
    public = PgJobStore(dsn)
    await store.setup()
    try:
        path = await conn.fetchval("SHOW search_path")
        # The same statement on the same connection for the public queue first: a
        # statement prepared for one schema must not be reused for the other.
        public_id = await public.enqueue("p", conn=conn)
        job_id = await store.enqueue("billed", {"k": 1}, conn=conn)
        [many_id] = await store.enqueue_many([{"job_type": "billed"}], conn=conn)
        assert await conn.fetchval("SHOW search_path") == path
        assert await conn.fetchval(f'SELECT array_agg(id ORDER BY id) FROM "{name}".jobs') == [
            job_id,
            many_id,
        ]
        assert await conn.fetchval("SELECT job_type FROM public.jobs WHERE id = $1", public_id)
        assert await public.enqueue("p", conn=conn) > public_id  # public again afterwards

        # Inside the caller's transaction: the job exists if and only if it commits.
        async with conn.transaction():
            committed = await store.enqueue("billed", {"k": 2}, conn=conn)
        rolled_back = conn.transaction()
        await rolled_back.start()
        await store.enqueue("billed", {"k": 3}, conn=conn)
        await rolled_back.rollback()
        assert await conn.fetchval("SHOW search_path") == path
        payloads = await conn.fetch(f'SELECT payload::text FROM "{name}".jobs ORDER BY id')
        assert [r[0] for r in payloads] == ['{"k": 1}', "{}", '{"k": 2}']
        assert (await store.get_job(committed)) is not None

        # A statement that fails inside the caller's transaction: the search_path cannot
        # be put back in the aborted transaction, and the rollback does it. (A table
        # CHECK of the test's, since pqrun refuses bad values before sending them.)
        await conn.execute(
            f"ALTER TABLE \"{name}\".jobs ADD CONSTRAINT no_bad CHECK (job_type <> 'bad')"
        )
        tx = conn.transaction()
        await tx.start()
        with pytest.raises(asyncpg.CheckViolationError):
            await store.enqueue("bad", conn=conn)
        await tx.rollback()
        assert await conn.fetchval("SHOW search_path") == path
        # And outside a transaction, the failed statement leaves the path as it was.
        with pytest.raises(asyncpg.CheckViolationError):
            await store.enqueue("bad", conn=conn)
        assert await conn.fetchval("SHOW search_path") == path
    finally:
        await store.close()
        await public.close()


async def test_a_missing_schema_says_how_to_create_it(dsn: str, schemas: Callable[[], str]) -> None:
    name = schemas()
    store = PgJobStore(dsn, schema=name)
    with pytest.raises(SchemaMissing, match=f"pqrun setup --schema {name}"):
        await store.start()


@pytest.mark.parametrize(
    "bad", ["", "Billing", "1abc", "a-b", 'x"; DROP TABLE jobs; --', "pg_jobs", "a" * 64]
)
def test_schema_names_are_validated(bad: str) -> None:
    with pytest.raises(ValueError, match="schema"):
        PgJobStore("postgresql://localhost/db", schema=bad)


def test_schema_and_a_search_path_of_ones_own_do_not_mix() -> None:
    with pytest.raises(ValueError, match="not both"):
        PgJobStore("postgresql://x/db", schema="a", server_settings={"search_path": "b"})
