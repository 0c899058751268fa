"""PgJobStore on a real PostgreSQL: enqueue, inspect, cancel, retry, and the errors users see."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from pqrun import (
    DatabaseUnavailable,
    JobConflict,
    JobStatus,
    PgJobStore,
    RawJSON,
    SchemaMissing,
)
from pqrun._store import startup
from pqrun.store import Connection

from .helpers import picked


async def test_enqueue_returns_id_and_stores_every_argument(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    job_id = await store.enqueue(
        job_type="send_email",
        payload={"user_id": 123, "template": "welcome"},
        priority=10,
        run_after=when,
        dedupe_key="email:123",
        max_attempts=3,
        timeout_seconds=3600,
    )
    assert isinstance(job_id, int)
    job = await store.get_job(job_id)
    assert job is not None
    assert job.job_type == "send_email"
    assert job.payload == {"user_id": 123, "template": "welcome"}
    assert job.status is JobStatus.READY
    assert (job.priority, job.max_attempts, job.timeout_seconds) == (10, 3, 3600)
    assert job.run_after == when
    assert job.dedupe_key == "email:123"
    assert job.attempts == 0
    raw = await conn.fetchval("SELECT payload FROM jobs WHERE id = $1", job_id)
    assert json.loads(raw) == {"user_id": 123, "template": "welcome"}


async def test_defaults_use_the_database_clock(store: PgJobStore, conn: asyncpg.Connection) -> None:
    job_id = await store.enqueue("x")
    row = await conn.fetchrow(
        "SELECT payload::text, run_after, created_at, max_attempts FROM jobs WHERE id = $1",
        job_id,
    )
    assert row is not None
    assert row["payload"] == "{}"
    assert row["run_after"] == row["created_at"]  # both now() of the inserting transaction
    assert row["max_attempts"] == 5


async def test_run_after_as_delay_is_added_to_database_now(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    job_id = await store.enqueue("x", run_after=timedelta(hours=2))
    gap = await conn.fetchval("SELECT run_after - created_at FROM jobs WHERE id = $1", job_id)
    assert gap == timedelta(hours=2)


async def test_naive_run_after_is_local_time(store: PgJobStore) -> None:
    naive = datetime.now() + timedelta(hours=1)
    job_id = await store.enqueue("x", run_after=naive)
    job = await store.get_job(job_id)
    assert job is not None
    assert abs(job.run_after - naive.astimezone()) < timedelta(seconds=1)
    assert await store.pickup("w") is None  # an hour away: not due


async def test_dedupe_key_returns_the_active_job(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    first = await store.enqueue("summarize", {"c": 1}, dedupe_key="summarize:conv:1")
    again = await store.enqueue("summarize", {"c": 2}, dedupe_key="summarize:conv:1")
    assert again == first
    assert await conn.fetchval("SELECT count(*) FROM jobs") == 1
    job = await picked(store, "w")  # RUNNING is still active
    assert await store.enqueue("summarize", dedupe_key="summarize:conv:1") == first
    assert await store.mark_done(job)
    # Once the job finished, the key is free again.
    third = await store.enqueue("summarize", dedupe_key="summarize:conv:1")
    assert third != first


async def test_enqueue_joins_the_callers_transaction(store: PgJobStore) -> None:
    async with store.transaction() as tx:
        kept = await store.enqueue("a", conn=tx)
        joined = await store.enqueue("b")  # no conn=: joins the enclosing block
    lost: list[int] = []

    async def enqueue_then_fail() -> None:
        async with store.transaction() as tx:
            lost.append(await store.enqueue("c", conn=tx))
            lost.append(await store.enqueue("d"))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await enqueue_then_fail()
    assert await store.get_job(kept) is not None
    assert await store.get_job(joined) is not None
    assert len(lost) == 2
    for job_id in lost:
        assert await store.get_job(job_id) is None


async def test_enqueue_with_a_plain_asyncpg_transaction(store: PgJobStore, dsn: str) -> None:
    other = await asyncpg.connect(dsn)
    try:
        tx = other.transaction()
        await tx.start()
        job_id = await store.enqueue("a", {"k": 1}, conn=other)
        await tx.rollback()
    finally:
        await other.close()
    assert await store.get_job(job_id) is None


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"job_type": ""}, ValueError, "job_type must be a non-empty string"),
        ({"job_type": "x", "payload": {"when": datetime.now()}}, TypeError, "payload of 'x'"),
        ({"job_type": "x", "payload": {1, 2}}, TypeError, "not JSON-serializable"),
        ({"job_type": "x", "payload": float("nan")}, TypeError, "not JSON-serializable"),
        ({"job_type": "x", "priority": "high"}, TypeError, "priority must be an int"),
        ({"job_type": "x", "max_attempts": 0}, ValueError, "max_attempts must be between 1"),
        ({"job_type": "x", "timeout_seconds": -5}, ValueError, "timeout_seconds"),
        ({"job_type": "x", "run_after": "tomorrow"}, TypeError, "run_after must be"),
        ({"job_type": "x", "dedupe_key": ""}, ValueError, "dedupe_key"),
    ],
)
async def test_bad_arguments_are_named(
    store: PgJobStore, kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        await store.enqueue(**kwargs)  # type: ignore[arg-type]


async def test_raw_json_payload_is_stored_as_is(store: PgJobStore) -> None:
    job_id = await store.enqueue("x", RawJSON('{"pre": "encoded"}'))
    job = await store.get_job(job_id)
    assert job is not None
    assert job.payload == {"pre": "encoded"}


async def test_get_and_list_jobs(store: PgJobStore) -> None:
    ids = [await store.enqueue("a"), await store.enqueue("b"), await store.enqueue("a")]
    await store.cancel(ids[0])
    assert await store.get_job(999_999) is None
    assert [j.id for j in await store.list_jobs()] == ids[::-1]
    assert [j.id for j in await store.list_jobs(job_type="a")] == [ids[2], ids[0]]
    assert [j.id for j in await store.list_jobs(status="CANCELLED")] == [ids[0]]
    assert [j.id for j in await store.list_jobs(status=JobStatus.READY, limit=1)] == [ids[2]]
    with pytest.raises(ValueError, match="unknown job status 'DONEISH'"):
        await store.list_jobs(status="DONEISH")


async def test_cancel_ready_and_running_but_not_finished(store: PgJobStore) -> None:
    ready = await store.enqueue("a")
    running = await store.enqueue("b")
    await picked(store, "w", ["b"])
    assert await store.cancel(ready)
    assert await store.cancel(running)
    assert not await store.cancel(ready)  # already cancelled
    assert not await store.cancel(424242)
    for job_id in (ready, running):
        job = await store.get_job(job_id)
        assert job is not None
        assert job.status is JobStatus.CANCELLED
        assert job.finished_at is not None


async def test_retry_gives_fresh_attempts(store: PgJobStore) -> None:
    job_id = await store.enqueue("a", max_attempts=1)
    job = await picked(store, "w")
    assert await store.mark_error(job, "boom") is JobStatus.FAILED
    assert await store.retry(job_id)
    again = await store.get_job(job_id)
    assert again is not None
    assert (again.status, again.attempts, again.finished_at) == (JobStatus.READY, 0, None)
    assert again.last_error == "boom"  # kept for the record
    assert not await store.retry(job_id)  # READY: nothing to retry
    done = await store.enqueue("b")
    assert await store.mark_done(await picked(store, "w", ["b"]))
    assert not await store.retry(done)


async def test_retry_refuses_when_dedupe_key_is_taken(store: PgJobStore) -> None:
    old = await store.enqueue("a", dedupe_key="k")
    await store.cancel(old)
    await store.enqueue("a", dedupe_key="k")
    with pytest.raises(JobConflict, match="same dedupe_key"):
        await store.retry(old)


async def test_unreachable_database_is_named() -> None:
    store = PgJobStore("postgresql://nobody:secret@127.0.0.1:1/nowhere", connect_timeout=2)
    with pytest.raises(DatabaseUnavailable, match=r"127\.0\.0\.1:1") as caught:
        await store.enqueue("x")
    assert "secret" not in str(caught.value)
    assert "Check that the server is running" in str(caught.value)


async def test_missing_database_says_so(server_dsn: str) -> None:
    from .conftest import with_database

    store = PgJobStore(with_database(server_dsn, "pqrun_no_such_db"))
    with pytest.raises(DatabaseUnavailable, match="Create the database"):
        await store.start()


async def test_missing_schema_says_how_to_apply_it(dsn: str) -> None:
    store = PgJobStore(dsn, server_settings={"search_path": "no_such_schema"})
    with pytest.raises(SchemaMissing, match=r"ddl\.sql"):
        await store.start()
    assert not store.started


def test_store_needs_a_dsn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PQRUN_DSN", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(ValueError, match="DATABASE_URL"):
        PgJobStore()


def test_store_reads_dsn_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PQRUN_DSN", raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:pw@h/db")
    store = PgJobStore()
    assert store.dsn == "postgresql://u:pw@h/db"
    assert "pw" not in repr(store)


async def test_moves_need_the_owner(store: PgJobStore) -> None:
    job_id = await store.enqueue("a")
    await picked(store, "w")
    with pytest.raises(TypeError, match="worker_id= and attempt="):
        await store.mark_done(job_id)
    assert await store.mark_done(job_id, {"ok": 1}, worker_id="w", attempt=1)


async def test_transaction_block_never_takes_a_second_connection(dsn: str) -> None:
    store = PgJobStore(dsn, min_size=1, max_size=1)
    async with store, store.transaction() as tx:
        await tx.execute("SELECT 1")
        await store.enqueue("a")  # would wait forever for a second connection
        async with store.transaction() as nested, store.connection() as same:
            assert nested is tx
            assert same is tx


async def test_a_first_use_and_listen_go_through_the_stores_own_methods(dsn: str) -> None:
    """A subclass (or a test) that wraps start() or dedicated_connection() sees every
    start and every connection of its own the store makes, not only direct calls."""
    calls: list[str] = []

    class CountingStore(PgJobStore):
        async def start(self) -> None:
            calls.append("start")
            await super().start()

        async def dedicated_connection(
            self,
            purpose: str,
            server_settings: Mapping[str, str] | None = None,
            *,
            session: bool = False,
        ) -> Connection:
            calls.append(purpose)
            return await super().dedicated_connection(purpose, server_settings, session=session)

    counting = CountingStore(dsn)
    try:
        await counting.enqueue("t")  # no start(): the first use starts the store
        assert calls[:1] == ["start"]
        listener = await counting.listen(lambda _payload: None)
        await listener.close()
        assert "a LISTEN connection" in calls
    finally:
        await counting.close()


def test_the_dsn_can_be_set_and_the_schema_cannot() -> None:
    store = PgJobStore("postgresql://a@127.0.0.1:1/a", schema="billing")
    store.dsn = "postgresql://b@127.0.0.1:1/b"
    assert store.dsn == "postgresql://b@127.0.0.1:1/b"
    # The schema is in every connection's search_path: pass schema= to PgJobStore.
    with pytest.raises(AttributeError):
        store.schema = "other"  # type: ignore[misc]
    assert store.schema == "billing"


async def test_a_connection_in_use_when_the_store_closes_is_let_go_quietly(dsn: str) -> None:
    # A statement that outlives close()'s wait (wait() on a loaded machine): the block
    # ends normally, not with an error about the pool the store no longer has.
    store = PgJobStore(dsn)
    await store.start()
    async with store.connection() as conn:
        assert await conn.fetchval("SELECT 1") == 1
        await store.close(within=0.1)
    assert not store.started


async def test_many_first_uses_at_once_open_one_pool(dsn: str, conn: asyncpg.Connection) -> None:
    # Each first use of a store that was not started opens its pool; 150 at once used to
    # open 150 pools (and ran the server out of connections).
    lazy = PgJobStore(dsn, max_size=4, server_settings={"application_name": "first_uses"})
    try:
        found = await asyncio.gather(*(lazy.get_job(10**12 + n) for n in range(150)))
        opened = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'first_uses'"
        )
    finally:
        await lazy.close()
    assert found == [None] * 150
    assert opened <= 4


@pytest.mark.parametrize("min_size", [0, 1])
@pytest.mark.parametrize("staggered", [False, True], ids=["together", "staggered"])
async def test_many_first_uses_at_once_of_a_store_without_its_schema_each_say_so(
    dsn: str,
    schemas: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
    min_size: int,
    staggered: bool,
) -> None:
    # The first failed start closed the pool under the other first uses, which then
    # said "cannot connect to PostgreSQL" or "lost the connection" (or failed an
    # assertion) instead of what is wrong and how to fix it: those that came while it
    # checked the schema (with min_size=0, as pqrun.sync's stores, all of them) took
    # connections from a pool that was open, not yet checked.
    attempts = 0
    check = startup._open_and_check

    async def counted(db: Any) -> None:
        nonlocal attempts
        attempts += 1
        await check(db)

    monkeypatch.setattr(startup, "_open_and_check", counted)
    lazy = PgJobStore(dsn, schema=schemas(), min_size=min_size, max_size=4)

    async def first_use(n: int) -> object:
        if staggered:
            await asyncio.sleep(n * 0.0005)
        return await lazy.get_job(n)

    try:
        found = await asyncio.gather(*(first_use(n) for n in range(1, 41)), return_exceptions=True)
    finally:
        await lazy.close()
    wrong = [repr(error) for error in found if not isinstance(error, SchemaMissing)]
    assert not wrong, wrong[:3]
    assert all("is not in" in str(error) and "pqrun setup" in str(error) for error in found)
    # Those that waited for a start that failed fail with it, not each after a start of
    # its own (against a server that answers nothing, one statement timeout each).
    assert attempts < 40
    # Each its own error object: one raised by all would hold every caller's frames.
    assert len({id(error) for error in found}) == len(found)
