"""delete_done=True: a completion deletes its job instead of writing it DONE, except a
job that someone reads after it ends (a store.wait(), dependent jobs)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from pqrun import Job, JobContext, JobStatus, PgJobStore, Worker, testing
from pqrun.observers import JobObserver

from .helpers import QUICK, counts, store_of_role, wait_until

# Records every row version written DONE, so a test can tell a job deleted at its
# completion from one written DONE and pruned after.
WRITTEN_DONE = """
CREATE TABLE IF NOT EXISTS written_done (id bigint);
TRUNCATE written_done;
CREATE OR REPLACE FUNCTION record_written_done() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO written_done VALUES (NEW.id);
    RETURN NULL;
END
$$;
CREATE TRIGGER record_written_done AFTER UPDATE ON jobs FOR EACH ROW
    WHEN (NEW.status = 'DONE') EXECUTE FUNCTION record_written_done();
"""


@pytest.fixture
async def written_done(conn: asyncpg.Connection) -> AsyncIterator[None]:
    await conn.execute(WRITTEN_DONE)
    try:
        yield
    finally:
        await conn.execute(
            "DROP TRIGGER record_written_done ON jobs; DROP TABLE written_done;"
            "DROP FUNCTION record_written_done()"
        )


async def written_done_ids(conn: asyncpg.Connection) -> set[int]:
    return {row["id"] for row in await conn.fetch("SELECT id FROM written_done")}


@pytest.mark.parametrize("delete_done", [True, None])
async def test_delete_done_deletes_each_job_as_it_completes(
    store: PgJobStore,
    conn: asyncpg.Connection,
    written_done: None,
    delete_done: bool | None,
) -> None:
    ran: list[int] = []

    async def handler(ctx: JobContext) -> dict[str, int]:
        ran.append(ctx.job.id)
        return {"n": ctx.job.id}

    ids = [await store.enqueue("t", {"i": i}) for i in range(60)]
    worker = Worker(
        store=store,
        handlers={"t": handler},
        concurrency=8,
        delete_done=delete_done,
        # Nothing is old enough for the pruner: what goes, goes at its completion.
        **QUICK,
    )
    await worker.start()
    try:
        expected = {} if delete_done else {"DONE": len(ids)}

        async def all_written() -> bool:
            return sorted(ran) == ids and await counts(conn) == expected

        await wait_until(all_written)
    finally:
        await worker.stop()
    if delete_done:
        assert await counts(conn) == {}
        assert await written_done_ids(conn) == set()
    else:
        assert await counts(conn) == {"DONE": len(ids)}
        assert await written_done_ids(conn) == set(ids)
        job = await store.get_job(ids[0])
        assert job is not None
        assert job.result == {"n": ids[0]}


async def test_delete_done_keeps_failures_as_before(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    async def handler(ctx: JobContext) -> None:
        raise RuntimeError(f"broken {ctx.payload['i']}")

    failing = await store.enqueue("t", {"i": 1}, max_attempts=1)
    worker = Worker(store=store, handlers={"t": handler}, delete_done=True, **QUICK)
    await worker.start()
    try:

        async def failed() -> bool:
            job = await store.get_job(failing)
            return job is not None and job.status is JobStatus.FAILED

        await wait_until(failed)
    finally:
        await worker.stop()
    job = await store.get_job(failing)
    assert job is not None
    assert "broken 1" in (job.last_error or "")


def held_back(
    result: int,
) -> tuple[Callable[[JobContext], Awaitable[int]], asyncio.Event, asyncio.Event]:
    """A handler that says it started, then returns ``result`` once let go."""
    started = asyncio.Event()
    go_on = asyncio.Event()

    async def handler(ctx: JobContext) -> int:
        started.set()
        await go_on.wait()
        return result

    return handler, started, go_on


async def test_a_job_someone_waits_for_is_kept_done_with_its_result(
    store: PgJobStore, conn: asyncpg.Connection, written_done: None
) -> None:
    handler, started, go_on = held_back(42)

    waited_for = await store.enqueue("t")
    worker = Worker(store=store, handlers={"t": handler}, delete_done=True, **QUICK)
    await worker.start()
    try:
        await asyncio.wait_for(started.wait(), 30)
        waiting = asyncio.ensure_future(store.wait(waited_for, timeout=60))

        async def marked() -> bool:
            return bool(await conn.fetchval("SELECT awaited FROM jobs WHERE id = $1", waited_for))

        await wait_until(marked)
        go_on.set()
        job = await waiting
        other = await store.enqueue("t")  # nobody waits for this one

        async def other_gone() -> bool:
            return await store.get_job(other) is None

        await wait_until(other_gone)
    finally:
        go_on.set()
        await worker.stop()
    assert job.status is JobStatus.DONE
    assert job.result == 42
    kept = await store.get_job(waited_for)
    assert kept is not None
    assert kept.status is JobStatus.DONE
    assert kept.result == 42
    assert await written_done_ids(conn) == {waited_for}


async def test_a_wait_that_begins_while_the_job_runs_gets_it_though_its_listen_is_slow(
    dsn: str, store: PgJobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler, started, go_on = held_back(7)

    job_id = await store.enqueue("t")
    waiting_store = PgJobStore(dsn)
    listen = waiting_store._waiters._listen

    async def slow_listen(on_payload: Any) -> Any:
        # The job ends while the waiting store's LISTEN connection opens.
        go_on.set()
        await wait_until(job_ended)
        return await listen(on_payload)

    async def job_ended() -> bool:
        job = await store.get_job(job_id)
        return job is None or job.status is JobStatus.DONE

    monkeypatch.setattr(waiting_store._waiters, "_listen", slow_listen)
    worker = Worker(store=store, handlers={"t": handler}, delete_done=True, **QUICK)
    await worker.start()
    try:
        await asyncio.wait_for(started.wait(), 30)
        job = await waiting_store.wait(job_id, timeout=60)
    finally:
        go_on.set()
        await worker.stop()
        await waiting_store.close()
    assert job.status is JobStatus.DONE
    assert job.result == 7


async def test_the_testing_drain_keeps_results_whatever_the_environment_says(
    store: PgJobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKER_DELETE_DONE", "true")
    job_id = await store.enqueue("t")
    assert await testing.drain(store, {"t": lambda ctx: "kept"}, **QUICK) == 1
    job = await store.get_job(job_id)
    assert job is not None
    assert job.result == "kept"
    other = await store.enqueue("t")
    await testing.drain(store, {"t": lambda ctx: "gone"}, delete_done=True, **QUICK)
    assert await store.get_job(other) is None


async def test_jobs_others_depend_on_are_kept_and_release_them(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    order: list[str] = []

    async def handler(ctx: JobContext) -> str:
        order.append(ctx.job.job_type)
        return ctx.job.job_type

    first = await store.enqueue("charge")
    second = await store.enqueue("ship", depends_on=[first])
    worker = Worker(
        store=store, handlers={"charge": handler, "ship": handler}, delete_done=True, **QUICK
    )
    await worker.start()
    try:

        async def shipped() -> bool:
            return order == ["charge", "ship"] and await store.get_job(second) is None

        await wait_until(shipped)
    finally:
        await worker.stop()
    kept = await store.get_job(first)
    assert kept is not None
    assert kept.status is JobStatus.DONE
    assert kept.result == "charge"


@pytest.mark.parametrize("reader", ["waiter", "dependent"])
async def test_a_row_a_reader_holds_is_passed_over_at_once_and_written_done(
    store: PgJobStore, conn: asyncpg.Connection, reader: str
) -> None:
    job_id = await store.enqueue("t")
    [job] = await store.pickup_batch("w", ["t"], 1)
    holder = await asyncpg.connect(store.dsn)
    try:
        marking = holder.transaction()
        await marking.start()
        if reader == "waiter":
            await holder.execute("UPDATE jobs SET awaited = true WHERE id = $1", job_id)
        else:  # its trigger locks the job and marks it has_dependents
            dependent = await holder.fetchval(
                "INSERT INTO jobs (job_type, depends_on) VALUES ('next', ARRAY[$1::bigint])"
                " RETURNING id",
                job_id,
            )
        # Not waited for (the writer's lock_timeout would hold up the whole batch).
        deleted = await asyncio.wait_for(store.delete_done_batch([job]), 30)
        await marking.commit()
    finally:
        await holder.close()
    assert deleted == set()
    # Left RUNNING for the plain completion, which the worker's writer makes next.
    assert await store.mark_done_batch([(job, '"kept"', 5)]) == {(job_id, job.lease_id)}
    kept = await store.get_job(job_id)
    assert kept is not None
    assert kept.status is JobStatus.DONE
    assert kept.result == "kept"
    if reader == "dependent":
        released = await store.get_job(dependent)
        assert released is not None
        assert released.status is JobStatus.READY


async def test_a_row_held_by_a_foreign_keys_lock_is_written_done_without_waiting(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    held = await store.enqueue("t")
    plain = await store.enqueue("t")
    jobs = {job.id: job for job in await store.pickup_batch("w", ["t"], 2)}
    holder = await asyncpg.connect(store.dsn)
    try:
        locking = holder.transaction()
        await locking.start()
        # What an insert into a table with a foreign key to jobs(id) takes.
        await holder.execute("SELECT 1 FROM jobs WHERE id = $1 FOR KEY SHARE", held)
        deleted = await asyncio.wait_for(store.delete_done_batch(list(jobs.values())), 30)
        assert deleted == {(plain, jobs[plain].lease_id)}
        # The plain completion does not conflict with KEY SHARE: no wait either.
        moved = await asyncio.wait_for(store.mark_done_batch([(jobs[held], "1", 1)]), 30)
        assert moved == {(held, jobs[held].lease_id)}
        await locking.commit()
    finally:
        await holder.close()
    assert await counts(conn) == {"DONE": 1}


class Ends(JobObserver):
    """What the worker reported for each job."""

    def __init__(self) -> None:
        self.ends: dict[int, str] = {}

    def finished(self, job: Job, outcome: str, duration_seconds: float) -> None:
        self.ends[job.id] = outcome


async def test_jobs_deleted_beside_one_whose_row_is_locked_are_reported_done(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    ends = Ends()
    store.observe(ends)
    plain = await store.enqueue("t")
    depended_on = await store.enqueue("t")
    await store.enqueue("later", depends_on=[depended_on])
    started: set[int] = set()
    go_on = asyncio.Event()

    async def handler(ctx: JobContext) -> str:
        started.add(ctx.job.id)
        await go_on.wait()
        return "ok"

    worker = Worker(store=store, handlers={"t": handler}, concurrency=2, delete_done=True, **QUICK)
    holder = await asyncpg.connect(store.dsn)
    await worker.start()
    try:

        async def both_started() -> bool:
            return started == {plain, depended_on}

        await wait_until(both_started)
        # Another dependent, in a transaction that holds the row past the writer's
        # lock_timeout: its completion waits; the deleted job's must not.
        locking = holder.transaction()
        await locking.start()
        await holder.execute(
            "INSERT INTO jobs (job_type, depends_on) VALUES ('later', ARRAY[$1::bigint])",
            depended_on,
        )
        go_on.set()

        async def plain_reported() -> bool:
            return plain in ends.ends

        await wait_until(plain_reported)
        await locking.commit()

        async def both_reported() -> bool:
            return depended_on in ends.ends

        await wait_until(both_reported)
    finally:
        go_on.set()
        await holder.close()
        await worker.stop()
    assert ends.ends == {plain: "done", depended_on: "done"}
    assert await store.get_job(plain) is None
    kept = await store.get_job(depended_on)
    assert kept is not None
    assert kept.status is JobStatus.DONE


async def test_delete_done_never_deletes_a_job_its_claim_no_longer_owns(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    cancelled = await store.enqueue("t")
    picked_again = await store.enqueue("t")
    owned = await store.enqueue("t")
    jobs = {job.id: job for job in await store.pickup_batch("w", ["t"], 3)}
    assert set(jobs) == {cancelled, picked_again, owned}
    await store.cancel(cancelled)
    # Reaped and claimed again: RUNNING under another claim.
    await conn.execute(
        "UPDATE jobs SET attempts = attempts + 1, lease_id = lease_id + 1, locked_by = 'w2' "
        "WHERE id = $1",
        picked_again,
    )
    moved = await store.delete_done_batch([jobs[i] for i in (cancelled, picked_again, owned)])
    assert moved == {(owned, jobs[owned].lease_id)}
    assert await store.get_job(owned) is None
    states = {
        row["id"]: (row["status"], row["locked_by"])
        for row in await conn.fetch("SELECT id, status, locked_by FROM jobs")
    }
    assert states == {cancelled: ("CANCELLED", "w"), picked_again: ("RUNNING", "w2")}


async def test_delete_done_without_delete_rights_keeps_jobs_done_and_says_so_once(
    dsn: str, store: PgJobStore, conn: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    async with store_of_role(conn, dsn, "pqrun_nodelete", "SELECT, INSERT, UPDATE") as limited:
        ids = [await store.enqueue("t") for _ in range(20)]
        worker = Worker(store=limited, handlers={"t": lambda ctx: "ok"}, delete_done=True, **QUICK)
        await worker.start()
        try:

            async def all_done() -> bool:
                return await counts(conn) == {"DONE": len(ids)}

            await wait_until(all_done)
        finally:
            await worker.stop()
    assert caplog.text.count("refused for lack of privilege") == 1
    assert "GRANT DELETE ON jobs" in caplog.text


async def test_a_delete_the_database_refuses_keeps_the_jobs_done_not_failed(
    store: PgJobStore, conn: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    await conn.execute(
        """
        CREATE FUNCTION refuse_deleting_kept() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'job % is on legal hold', OLD.id;
        END
        $$;
        CREATE TRIGGER refuse_deleting_kept BEFORE DELETE ON jobs FOR EACH ROW
            WHEN (OLD.job_type = 'held') EXECUTE FUNCTION refuse_deleting_kept();
        """
    )
    try:
        held = [await store.enqueue("held") for _ in range(10)]
        for _ in range(10):
            await store.enqueue("t")
        worker = Worker(
            store=store,
            handlers={"held": lambda ctx: "ran", "t": lambda ctx: "ran"},
            concurrency=4,
            delete_done=True,
            **QUICK,
        )
        await worker.start()
        try:

            async def only_held_left() -> bool:
                rows = await conn.fetch("SELECT id, status FROM jobs")
                return {r["id"]: r["status"] for r in rows} == dict.fromkeys(held, "DONE")

            await wait_until(only_held_left)
        finally:
            await worker.stop()
        # Only the held jobs are kept, DONE (a batch refused is deleted one by one): the
        # others all went, none FAILED; said once.
        assert caplog.text.count("delete_done could not delete it") == 1
        assert "legal hold" in caplog.text
    finally:
        await conn.execute(
            "DROP TRIGGER refuse_deleting_kept ON jobs; DROP FUNCTION refuse_deleting_kept()"
        )


def test_delete_done_is_off_unless_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    store = PgJobStore("postgresql://x/db")

    def deletes(**kwargs: object) -> bool:
        worker = Worker(store=store, handlers={"t": lambda ctx: None}, **kwargs)  # type: ignore[arg-type]
        return worker.delete_done

    assert not deletes()
    assert not deletes(keep_done=0)
    assert deletes(delete_done=True)
    monkeypatch.setenv("WORKER_DELETE_DONE", "true")
    assert deletes()
    assert not deletes(delete_done=False)
    monkeypatch.setenv("WORKER_DELETE_DONE", "maybe")
    with pytest.raises(ValueError, match="WORKER_DELETE_DONE"):
        deletes()
