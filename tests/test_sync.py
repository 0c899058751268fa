"""pqrun.sync: enqueue from synchronous code, by DSN or through a DB-API connection."""

from __future__ import annotations

import asyncio
import secrets
import sys
from collections.abc import Iterator
from datetime import timedelta

import asyncpg
import psycopg
import pytest

import pqrun.sync
from pqrun import PgJobStore
from pqrun._store.session_settings import quote_ident


@pytest.fixture(autouse=True)
def close_sync_connections() -> Iterator[None]:
    yield
    pqrun.sync.close()


async def rows(conn: asyncpg.Connection, table: str = "jobs") -> list[tuple[str, str]]:
    found = await conn.fetch(f"SELECT job_type, payload::text FROM {table} ORDER BY id")
    return [(r["job_type"], r["payload"]) for r in found]


async def test_enqueue_by_dsn_from_inside_a_running_loop(
    store: PgJobStore, dsn: str, conn: asyncpg.Connection
) -> None:
    # A sync function called by async code: the call blocks, but works.
    job_id = pqrun.sync.enqueue(dsn, "email", {"to": "a@example.com"}, priority=3)
    again = pqrun.sync.enqueue(dsn, "email", dedupe_key="k")
    assert pqrun.sync.enqueue(dsn, "email", dedupe_key="k") == again
    delayed = pqrun.sync.enqueue(dsn, "later", run_after=timedelta(hours=1))
    ids = pqrun.sync.enqueue_many(dsn, [{"job_type": "bulk", "payload": {"n": n}} for n in (1, 2)])
    assert len({job_id, again, delayed, *ids}) == 5
    assert [j.job_type for j in await store.list_jobs()] == [
        "bulk",
        "bulk",
        "later",
        "email",
        "email",
    ]
    job = await store.get_job(job_id)
    assert job is not None
    assert job.priority == 3
    assert job.payload == {"to": "a@example.com"}
    later = await store.get_job(delayed)
    assert later is not None
    assert later.run_after > job.run_after + timedelta(minutes=59)


def test_enqueue_by_dsn_without_any_event_loop(dsn: str) -> None:
    asyncio.run(_reset(dsn))
    assert pqrun.sync.enqueue(dsn, "plain") == 1
    assert pqrun.sync.enqueue(dsn, "plain") == 2  # the same private loop and pool again


async def _reset(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("TRUNCATE jobs RESTART IDENTITY")
    finally:
        await conn.close()


async def test_a_psycopg_connection_enqueues_inside_the_callers_transaction(
    store: PgJobStore, dsn: str, conn: asyncpg.Connection
) -> None:
    with psycopg.connect(dsn) as pg:
        first = pqrun.sync.enqueue(pg, "receipt", {"order": 1}, dedupe_key="order:1")
        # Not committed yet: another connection does not see it.
        assert await rows(conn) == []
        assert pqrun.sync.enqueue(pg, "receipt", dedupe_key="order:1") == first
        pg.commit()
        assert await rows(conn) == [("receipt", '{"order": 1}')]

        pqrun.sync.enqueue(pg, "receipt", {"order": 2})
        pg.rollback()
        assert await rows(conn) == [("receipt", '{"order": 1}')]

        ids = pqrun.sync.enqueue_many(
            pg, [{"job_type": "a", "run_after": timedelta(seconds=30)}, {"job_type": "b"}]
        )
        pg.commit()
        assert len(ids) == 2
        assert [t for t, _ in await rows(conn)] == ["receipt", "a", "b"]
        with pytest.raises(ValueError, match="item 1"):
            pqrun.sync.enqueue_many(pg, [{"job_type": "c"}, {"job_type": ""}])
        assert len(await rows(conn)) == 3


async def test_a_psycopg_connection_in_autocommit_mode(
    store: PgJobStore, dsn: str, conn: asyncpg.Connection
) -> None:
    with psycopg.connect(dsn, autocommit=True) as pg:
        job_id = pqrun.sync.enqueue(pg, "now", timeout_seconds=timedelta(minutes=2))
    job = await store.get_job(job_id)
    assert job is not None
    assert job.timeout_seconds == 120


async def test_a_schema_through_a_dsn_and_through_a_psycopg_connection(
    dsn: str, conn: asyncpg.Connection
) -> None:
    schema = f"sync_{secrets.token_hex(3)}"
    store = PgJobStore(dsn, schema=schema)
    await store.setup()
    try:
        pqrun.sync.enqueue(dsn, "by_dsn", schema=schema)
        with psycopg.connect(dsn) as pg:
            path = pg.execute("SHOW search_path").fetchone()
            pqrun.sync.enqueue(pg, "by_connection", schema=schema)
            assert pg.execute("SHOW search_path").fetchone() == path
            pg.commit()
            # A statement that fails inside the transaction: the rollback restores it.
            # (pqrun refuses bad arguments before sending them: the table refuses this.)
            await conn.execute(
                f"ALTER TABLE {quote_ident(schema)}.jobs ADD CHECK (job_type <> 'bad')"
            )
            with pytest.raises(psycopg.errors.CheckViolation):
                pqrun.sync.enqueue(pg, "bad", schema=schema)
            pg.rollback()
            assert pg.execute("SHOW search_path").fetchone() == path
        assert await rows(conn, f"{quote_ident(schema)}.jobs") == [
            ("by_dsn", "{}"),
            ("by_connection", "{}"),
        ]
    finally:
        await store.close()
        await conn.execute(f"DROP SCHEMA {quote_ident(schema)} CASCADE")


async def test_pqrun_schema_from_the_environment_holds_for_a_dbapi_connection_too(
    dsn: str, conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = f"sync_{secrets.token_hex(3)}"
    store = PgJobStore(dsn, schema=schema)
    await store.setup()
    monkeypatch.setenv("PQRUN_SCHEMA", schema)
    try:
        with psycopg.connect(dsn) as pg:
            pqrun.sync.enqueue(pg, "from_env")
            pqrun.sync.enqueue_many(pg, [{"job_type": "from_env_many"}])
            pg.commit()
        assert await rows(conn, f"{quote_ident(schema)}.jobs") == [
            ("from_env", "{}"),
            ("from_env_many", "{}"),
        ]
    finally:
        await store.close()
        await conn.execute(f"DROP SCHEMA {quote_ident(schema)} CASCADE")


def test_errors_name_the_problem() -> None:
    with pytest.raises(TypeError, match="DSN string or a DB-API connection"):
        pqrun.sync.enqueue(42, "x")
    with pytest.raises(ValueError, match="job_type"):
        pqrun.sync.enqueue(object(), "")  # arguments are checked before anything else
    with pytest.raises(ValueError, match="schema"):
        pqrun.sync.enqueue("postgresql://x/db", "x", schema="Bad Name")


FORK_SCRIPT = """
import os, sys
import pqrun.sync

dsn = sys.argv[1]
pqrun.sync.enqueue(dsn, "parent")
pid = os.fork()
if pid == 0:
    # The parent's loop thread does not exist in the child: it must make its own.
    pqrun.sync.enqueue(dsn, "child")
    os._exit(0)
_, status = os.waitpid(pid, 0)
pqrun.sync.enqueue(dsn, "parent_again")
sys.exit(os.waitstatus_to_exitcode(status))
"""


async def test_enqueue_by_dsn_works_in_a_forked_child(
    store: PgJobStore, dsn: str, conn: asyncpg.Connection
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", FORK_SCRIPT, dsn, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, stderr.decode()
    assert [t for t, _ in await rows(conn)] == ["parent", "child", "parent_again"]
