"""pqrun.testing: the helpers and the pytest recipes of docs/testing.md, as users write them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest

from pqrun import Fail, JobContext, PgJobStore, Retry, Worker
from pqrun.testing import RecordingStore, make_job, run_handler, temporary_queue

# -- handlers a user might have -------------------------------------------------------


async def signup(ctx: JobContext) -> dict[str, int]:
    user = ctx.job.payload["user"]
    email = await ctx.store.enqueue("send_email", {"user": user, "template": "welcome"})
    return {"user": user, "email_job": email}


async def send_email(ctx: JobContext) -> str:
    if ctx.job.payload.get("template") is None:
        raise Fail("no template")
    if ctx.attempt == 1 and ctx.job.payload.get("flaky"):
        raise Retry(after=timedelta(seconds=0))
    return f"sent {ctx.job.payload['template']} to user {ctx.job.payload['user']}"


def count_words(ctx: JobContext) -> int:  # a plain function: runs in a thread
    return len(ctx.job.payload["text"].split())


HANDLERS = {"signup": signup, "send_email": send_email, "count_words": count_words}


# -- without a database ---------------------------------------------------------------


async def test_run_handler_returns_the_result_and_records_enqueues() -> None:
    recorder = RecordingStore()
    result = await run_handler(signup, {"user": 7}, store=recorder)
    assert result == {"user": 7, "email_job": 1}
    assert recorder.enqueued == [
        {"job_type": "send_email", "payload": {"user": 7, "template": "welcome"}}
    ]
    assert await run_handler(count_words, {"text": "a b c"}) == 3


async def test_run_handler_lets_the_handlers_signals_through() -> None:
    with pytest.raises(Fail, match="no template"):
        await run_handler(send_email, {"user": 1})
    with pytest.raises(Retry):
        await run_handler(send_email, {"user": 1, "template": "x", "flaky": True})
    # The same job on its second attempt succeeds.
    assert await run_handler(
        send_email, {"user": 1, "template": "x", "flaky": True}, attempt=2
    ) == ("sent x to user 1")


async def test_the_stand_in_store_says_what_it_cannot_do() -> None:
    async def needs_db(ctx: JobContext) -> object:
        return await ctx.store.get_job(1)

    with pytest.raises(AttributeError, match="temporary_queue"):
        await run_handler(needs_db)
    with pytest.raises(ValueError, match="job_type"):
        await RecordingStore().enqueue("")
    with pytest.raises(TypeError, match="no field"):
        make_job(colour="red")
    assert make_job("x", {"a": 1}, attempt=3).attempts == 3


# -- with a database: the fixture recipe of docs/testing.md ---------------------------


@pytest.fixture
async def queue(dsn: str) -> AsyncIterator[PgJobStore]:
    """A queue of this test's own, in a schema that is dropped afterwards."""
    async with temporary_queue(dsn) as store:
        yield store


async def test_drain_runs_the_chain_until_the_queue_is_empty(queue: PgJobStore) -> None:
    await queue.enqueue("signup", {"user": 42})
    await queue.enqueue("send_email", {"user": 1, "template": "x", "flaky": True})
    worker = Worker(store=queue, handlers=HANDLERS)
    assert await worker.drain() == 4  # signup, its email, and the flaky one twice
    jobs = {(j.job_type, j.payload["user"]): j for j in await queue.list_jobs()}
    assert jobs["send_email", 42].result == "sent welcome to user 42"
    assert jobs["send_email", 1].attempts == 2
    assert all(j.status == "DONE" for j in jobs.values())


async def test_temporary_queues_are_separate_and_dropped(
    dsn: str, conn: asyncpg.Connection
) -> None:
    async with temporary_queue(dsn) as first, temporary_queue(dsn) as second:
        await first.enqueue("signup", {"user": 1})
        assert await second.list_jobs() == []
        schema = first.schema
    assert schema is not None
    assert not await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema
    )
