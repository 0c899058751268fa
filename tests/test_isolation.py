"""Workers on a database whose default isolation is stricter than READ COMMITTED."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from pqrun import Handler, JobContext, JobStatus, PgJobStore, Worker

from .helpers import QUICK, counts, wait_until

JOBS = 3000


@pytest.mark.parametrize("isolation", ["repeatable read", "serializable"])
@pytest.mark.parametrize("limited", [False, True], ids=["plain", "limited"])
@pytest.mark.parametrize("known", [True, False], ids=["learned", "changed-after-start"])
async def test_racing_workers_claim_without_errors_under_a_stricter_default_isolation(
    dsn: str,
    store: PgJobStore,
    conn: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
    isolation: str,
    limited: bool,
    known: bool,
) -> None:
    # A server, database or role may make every transaction REPEATABLE READ or
    # SERIALIZABLE by default. A claim then failed with "could not serialize access due
    # to concurrent update" whenever another worker claimed a row after the claim's
    # snapshot was taken: drain() raised it, and run() logged it as an error and backed
    # off. A limited type's claim counted the running jobs in a snapshot older than the
    # claim lock it took; completions were put aside and tried again, and two workers
    # adding to one minute's counts failed one of them. (changed-after-start: the
    # default was still READ COMMITTED when the stores started.)
    await conn.execute("INSERT INTO jobs (job_type) SELECT 't' FROM generate_series(1, $1)", JOBS)
    ran: Counter[int] = Counter()

    async def work(ctx: JobContext) -> None:
        ran[ctx.job.id] += 1

    handler = Handler(work, concurrency_limit=6) if limited else work
    stores = [
        PgJobStore(dsn, server_settings={"default_transaction_isolation": isolation})
        for _ in range(3)
    ]
    workers = [
        Worker(store=s, handlers={"t": handler}, concurrency=4, worker_id=f"w{n}", **QUICK)
        for n, s in enumerate(stores)
    ]
    caplog.set_level(logging.WARNING, logger="pqrun")
    try:
        for s in stores:
            await s.start()
            if not known:
                s._db.read_committed = True  # as learned before the default changed
        drained = await asyncio.wait_for(
            asyncio.gather(*(w.drain() for w in workers), return_exceptions=True), 120
        )
    finally:
        for s in stores:
            await s.close()
    errors = [repr(result) for result in drained if isinstance(result, BaseException)]
    assert not errors
    assert await counts(conn) == {"DONE": JOBS}
    assert len(ran) == JOBS
    assert set(ran.values()) == {1}
    ours = [record for record in caplog.records if record.name.startswith("pqrun")]
    said = [f"{record.levelname}: {record.getMessage()}" for record in ours]
    assert not said, said[:3]
    # Every run counted in the per-type minutes (flushed as each worker stopped).
    assert (
        await conn.fetchval("SELECT sum(done) FROM job_type_minutes WHERE job_type = 't'") == JOBS
    )


@pytest.mark.parametrize("isolation", ["repeatable read", "serializable"])
@pytest.mark.parametrize("known", [True, False], ids=["learned", "changed-after-start"])
@pytest.mark.parametrize("move", ["cancel", "cancel_many", "run_now", "wait"])
async def test_a_move_of_yours_that_waits_for_a_workers_move_is_made_under_a_stricter_default(
    dsn: str, store: PgJobStore, conn: asyncpg.Connection, isolation: str, known: bool, move: str
) -> None:
    # cancel() (or run_now(), or the mark of a wait()) waiting for the row lock of a
    # worker's claim of the same job raised "could not serialize access due to concurrent
    # update" once the claim committed, where READ COMMITTED reads the row again and
    # makes the move its guard allows (a RUNNING job is cancelled; a job claimed
    # meanwhile is not made due; a waiter hears of the job's end).
    strict = await strict_store(dsn, isolation, known=known)
    try:
        later = timedelta(hours=1) if move == "run_now" else None
        job_id = await strict.enqueue("t", run_after=later)
        claim = conn.transaction(isolation="read_committed")
        await claim.start()
        await conn.execute(
            "UPDATE jobs SET status = 'RUNNING', attempts = attempts + 1, locked_by = 'w', "
            "lease_id = txid_current(), locked_at = now() WHERE id = $1",
            job_id,
        )
        moves: dict[str, Callable[[], Coroutine[Any, Any, Any]]] = {
            "cancel": lambda: strict.cancel(job_id),
            "cancel_many": lambda: strict.cancel_many([job_id]),
            "run_now": lambda: strict.run_now(job_id),
            "wait": lambda: strict.wait(job_id, timeout=60),
        }
        made: asyncio.Task[Any] = asyncio.create_task(moves[move]())
        await until_a_statement_waits_for_a_lock(dsn)
        await claim.commit()
        if move == "wait":
            await conn.execute(
                "UPDATE jobs SET status = 'DONE', finished_at = now(), result = 'null' "
                "WHERE id = $1",
                job_id,
            )
        answer = await asyncio.wait_for(made, 60)
    finally:
        await strict.close()
    status = await conn.fetchval("SELECT status FROM jobs WHERE id = $1", job_id)
    if move == "run_now":
        assert (answer, status) == (False, "RUNNING")
    elif move == "wait":
        assert (answer.id, answer.status, status) == (job_id, JobStatus.DONE, "DONE")
    else:
        assert answer in (True, [job_id])
        assert status == "CANCELLED"


@pytest.mark.parametrize("isolation", ["repeatable read", "serializable"])
@pytest.mark.parametrize("known", [True, False], ids=["learned", "changed-after-start"])
@pytest.mark.parametrize("move", ["enqueue_dependent", "release", "mark_done"])
async def test_a_statement_that_waits_for_another_move_of_the_job_is_made_under_a_stricter_default(
    dsn: str, store: PgJobStore, conn: asyncpg.Connection, isolation: str, known: bool, move: str
) -> None:
    # A dependent's enqueue waiting for its parent's row (locked by the worker finishing
    # it), a release on shutdown or a hand-made completion waiting for a cancel of the
    # same job: each raised "could not serialize access" once the other committed,
    # where READ COMMITTED reads the row again (the dependent waits for its parent; the
    # cancelled job is left as it is).
    strict = await strict_store(dsn, isolation, known=known)
    try:
        await strict.enqueue("t")
        (job,) = await strict.pickup_batch("w", None, 1)
        other = conn.transaction(isolation="read_committed")
        await other.start()
        if move == "enqueue_dependent":
            # The worker's completion holds the parent, which stays RUNNING after all.
            await conn.execute("UPDATE jobs SET updated_at = now() WHERE id = $1", job.id)
        else:
            await conn.execute("UPDATE jobs SET status = 'CANCELLED' WHERE id = $1", job.id)
        moves: dict[str, Callable[[], Coroutine[Any, Any, Any]]] = {
            "enqueue_dependent": lambda: strict.enqueue("t", depends_on=[job.id]),
            "release": lambda: strict.release([job], "shutting down"),
            "mark_done": lambda: strict.mark_done(job, None, 1),
        }
        made: asyncio.Task[Any] = asyncio.create_task(moves[move]())
        await until_a_statement_waits_for_a_lock(dsn)
        await other.commit()
        answer = await asyncio.wait_for(made, 60)
    finally:
        await strict.close()
    if move == "enqueue_dependent":
        status = await conn.fetchval("SELECT status FROM jobs WHERE id = $1", answer)
        assert status == "WAITING"
    else:
        assert not answer  # not moved: the job was cancelled meanwhile
        status = await conn.fetchval("SELECT status FROM jobs WHERE id = $1", job.id)
        assert status == "CANCELLED"


async def strict_store(dsn: str, isolation: str, *, known: bool) -> PgJobStore:
    """A started store whose connections default to ``isolation``; ``known=False``: as
    if it had learned READ COMMITTED at start and the default changed after."""
    strict = PgJobStore(dsn, server_settings={"default_transaction_isolation": isolation})
    await strict.start()
    if not known:
        strict._db.read_committed = True
    return strict


async def until_a_statement_waits_for_a_lock(dsn: str) -> None:
    """Until a backend of the test database waits for a lock (the move under test waits
    for the row the other transaction holds)."""
    watcher = await asyncpg.connect(dsn)
    try:

        async def waiting() -> bool:
            found = await watcher.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            return bool(found)

        await wait_until(waiting, within=30)
    finally:
        await watcher.close()
