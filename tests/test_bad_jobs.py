"""A bad job fails alone: an outcome the database refuses, a payload a worker cannot
read, a handler that raises what it should not. Every other job goes on."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from pqrun import IdlePollPolicy, JobContext, JobStatus, PgJobStore, RawJSON, Snooze, Worker

from .helpers import QUICK, wait_until


async def _statuses(conn: asyncpg.Connection) -> dict[int, tuple[str, int, str | None]]:
    rows = await conn.fetch("SELECT id, status, attempts, last_error FROM jobs ORDER BY id")
    return {row["id"]: (row["status"], row["attempts"], row["last_error"]) for row in rows}


async def test_an_outcome_the_database_refuses_fails_that_job_alone(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    deep = RawJSON("[" * 100_000 + "]" * 100_000)  # valid JSON, too deep for jsonb (54001)

    async def handler(ctx: JobContext) -> object:
        kind = ctx.job.payload["kind"]
        await asyncio.sleep(0.05)  # so that the outcomes meet in one batch
        if kind == "deep":
            return deep
        if kind == "snooze":
            raise Snooze(after=timedelta(days=999_999_999))  # past any timestamp (22008)
        return {"ok": kind}

    kinds = ["ok"] * 10 + ["deep", "snooze"] + ["ok"] * 10
    ids = await store.enqueue_many([{"job_type": "t", "payload": {"kind": k}} for k in kinds])
    worker = Worker(store, handlers={"t": handler}, concurrency=len(kinds), **QUICK)
    await asyncio.wait_for(worker.drain(), 60)
    statuses = await _statuses(conn)
    for job_id, kind in zip(ids, kinds, strict=True):
        status, attempts, error = statuses[job_id]
        if kind == "ok":
            assert (status, attempts) == ("DONE", 1)
        else:
            assert (status, attempts) == ("FAILED", 1), (kind, error)
            assert error is not None
    deep_error = statuses[ids[10]][2]
    snooze_error = statuses[ids[11]][2]
    assert deep_error is not None
    assert "result could not be stored" in deep_error
    assert "54001" in deep_error
    assert snooze_error is not None
    assert "Snooze" in snooze_error


async def test_a_row_locked_by_another_session_holds_up_only_its_own_outcome(
    dsn: str, store: PgJobStore, conn: asyncpg.Connection
) -> None:
    release = asyncio.Event()

    async def handler(ctx: JobContext) -> str:
        await release.wait()
        return "done"

    ids = await store.enqueue_many([{"job_type": "t"}] * 6)
    worker = Worker(store, handlers={"t": handler}, concurrency=6, **QUICK)
    await worker.start()
    locker = await asyncpg.connect(dsn)
    try:

        async def all_running() -> bool:
            n = await conn.fetchval("SELECT count(*) FROM jobs WHERE status = 'RUNNING'")
            return bool(n == 6)

        await wait_until(all_running, within=30)
        await locker.execute("BEGIN")
        await locker.execute("SELECT * FROM jobs WHERE id = $1 FOR UPDATE", ids[0])
        release.set()

        async def others_done() -> bool:
            n = await conn.fetchval(
                "SELECT count(*) FROM jobs WHERE status = 'DONE' AND id <> $1", ids[0]
            )
            return bool(n == 5)

        # Written while the one row is still locked (the statement timeout is 30 s: a
        # batch waiting for that row would take that long at least).
        await wait_until(others_done, within=20)
        assert (await _statuses(conn))[ids[0]][0] == "RUNNING"
        await locker.execute("ROLLBACK")

        async def first_done() -> bool:
            return bool((await _statuses(conn))[ids[0]][0] == "DONE")

        await wait_until(first_done, within=30)
    finally:
        release.set()
        await locker.close()
        await worker.stop()


async def test_a_payload_a_worker_cannot_read_fails_alone_and_the_rest_run_once(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    # Written by SQL, which jsonb accepts: a number jsonb writes out with 5,001 digits
    # (more than Python reads as an int), and JSON nested 2,000 deep.
    await store.enqueue_many([{"job_type": "t", "payload": {"n": n}} for n in range(5)])
    huge = await conn.fetchval(
        "INSERT INTO jobs (job_type, payload) VALUES ('t', '{\"n\": 1e5000}') RETURNING id"
    )
    deep = await conn.fetchval(
        "INSERT INTO jobs (job_type, payload) VALUES ('t', $1::text::jsonb) RETURNING id",
        "[" * 2000 + "]" * 2000,
    )
    await store.enqueue_many([{"job_type": "t", "payload": {"n": n}} for n in range(5, 10)])
    seen: list[int] = []

    async def handler(ctx: JobContext) -> None:
        seen.append(ctx.job.payload["n"])

    worker = Worker(store, handlers={"t": handler}, concurrency=4, **QUICK)
    await asyncio.wait_for(worker.drain(), 60)
    assert sorted(seen) == list(range(10))
    statuses = await _statuses(conn)
    for job_id, (status, attempts, error) in statuses.items():
        if job_id in (huge, deep):
            assert (status, attempts) == ("FAILED", 1)
            assert error is not None
            assert error.startswith("its payload could not be read: ")
        else:
            assert (status, attempts, error) == ("DONE", 1, None)


async def test_a_handler_raising_keyboardinterrupt_or_generatorexit_fails_its_job_alone(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    async def handler(ctx: JobContext) -> str:
        kind = ctx.job.payload["kind"]
        if kind == "interrupt":
            raise KeyboardInterrupt
        if kind == "exit":
            raise GeneratorExit
        return "ok"

    kinds = ["interrupt", "ok", "exit", "ok"]
    ids = await store.enqueue_many(
        [{"job_type": "t", "payload": {"kind": k}, "max_attempts": 1} for k in kinds]
    )
    worker = Worker(store, handlers={"t": handler}, concurrency=1, **QUICK)
    await asyncio.wait_for(worker.drain(), 60)
    statuses = await _statuses(conn)
    assert [statuses[i][0] for i in ids] == ["FAILED", "DONE", "FAILED", "DONE"]
    assert "KeyboardInterrupt" in (statuses[ids[0]][2] or "")
    assert "GeneratorExit" in (statuses[ids[2]][2] or "")
    job = await store.get_job(ids[1])
    assert job is not None
    assert job.status is JobStatus.DONE


async def test_a_driver_error_that_is_no_refusal_is_retried_not_blamed_on_the_job(
    store: PgJobStore, conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A driver in a state it should not be in (seen once in the chaos run, around a
    # database restart) says nothing about the job: the write is tried again on a new
    # connection, and the job is not failed. (A fake: a real database cannot be made to
    # do this on demand.)
    original = PgJobStore.mark_done_batch
    failures = [asyncpg.exceptions.InternalClientError("cannot switch to state 12")]

    async def flaky(self: PgJobStore, *args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop()
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(PgJobStore, "mark_done_batch", flaky)

    async def handler(ctx: JobContext) -> str:
        return "ok"

    job_id = await store.enqueue("t")
    worker = Worker(store, handlers={"t": handler}, **QUICK)
    assert await asyncio.wait_for(worker.drain(), 60) == 1
    assert (await _statuses(conn))[job_id][:2] == ("DONE", 1)
    assert failures == []


async def test_an_unreadable_job_in_a_claim_does_not_hold_up_the_rest(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    # A running worker that polls once a minute: the jobs after a claim with an
    # unreadable row in it must run without waiting for that poll.
    ran: list[int] = []

    async def handler(ctx: JobContext) -> None:
        ran.append(ctx.job.payload["n"])

    polls = IdlePollPolicy(60, 60)
    worker = Worker(store, handlers={"t": handler}, concurrency=2, prefetch=0, idle_policy=polls)
    await worker.start()
    try:
        async with store.transaction() as tx:  # one commit: one notification for all
            for n in range(30):
                if n % 10 == 5:
                    await tx.execute(
                        "INSERT INTO jobs (job_type, payload) VALUES ('t', $1::text::jsonb)",
                        "[" * 2000 + "]" * 2000,
                    )
                await store.enqueue("t", {"n": n})

        async def all_ran() -> bool:
            return len(ran) == 30

        await wait_until(all_ran, within=30)
    finally:
        await worker.stop()
