"""keep_done=0: a completion deletes its job instead of keeping it DONE, except a job
that someone reads after it ends (a store.wait(), dependent jobs)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import timedelta
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from pqrun import JobContext, JobStatus, PgJobStore, Worker

from .helpers import QUICK, counts, wait_until

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


@pytest.mark.parametrize("keep_done", [0, None])
async def test_keep_done_zero_deletes_each_job_as_it_completes(
    store: PgJobStore,
    conn: asyncpg.Connection,
    written_done: None,
    keep_done: float | None,
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
        keep_done=keep_done,
        # The pruner has its first pass at the start and none during the test: what goes
        # goes at its completion.
        prune_every_seconds=3600,
        **QUICK,
    )
    await worker.start()
    try:
        expected = {} if keep_done == 0 else {"DONE": len(ids)}

        async def all_written() -> bool:
            return sorted(ran) == ids and await counts(conn) == expected

        await wait_until(all_written)
    finally:
        await worker.stop()
    if keep_done == 0:
        assert await counts(conn) == {}
        assert await written_done_ids(conn) == set()
    else:
        assert await counts(conn) == {"DONE": len(ids)}
        assert await written_done_ids(conn) == set(ids)
        job = await store.get_job(ids[0])
        assert job is not None
        assert job.result == {"n": ids[0]}


async def test_keep_done_zero_keeps_failures_and_retries_as_before(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    async def handler(ctx: JobContext) -> None:
        raise RuntimeError(f"broken {ctx.payload['i']}")

    failing = await store.enqueue("t", {"i": 1}, max_attempts=1)
    worker = Worker(store=store, handlers={"t": handler}, keep_done=0, **QUICK)
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


async def test_a_job_someone_waits_for_is_kept_done_with_its_result(
    store: PgJobStore, conn: asyncpg.Connection, written_done: None
) -> None:
    started = asyncio.Event()
    go_on = asyncio.Event()

    async def handler(ctx: JobContext) -> int:
        started.set()
        await go_on.wait()
        return 42

    waited_for = await store.enqueue("t")
    worker = Worker(store=store, handlers={"t": handler}, keep_done=0, **QUICK)
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
        store=store, handlers={"charge": handler, "ship": handler}, keep_done=0, **QUICK
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


async def test_a_waiter_that_marks_the_row_while_the_delete_waits_for_it_keeps_the_job(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    job_id = await store.enqueue("t")
    [job] = await store.pickup_batch("w", ["t"], 1)
    holder = await asyncpg.connect(store.dsn)
    try:
        marking = holder.transaction()
        await marking.start()
        await holder.execute("UPDATE jobs SET awaited = true WHERE id = $1", job_id)
        completing = asyncio.ensure_future(store.mark_done_batch([(job, '"kept"', 5)], forget=True))

        async def blocked() -> bool:
            return bool(
                await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )

        await wait_until(blocked)
        await marking.commit()
        moved = await asyncio.wait_for(completing, 30)
    finally:
        await holder.close()
    assert moved == {(job_id, job.lease_id)}
    kept = await store.get_job(job_id)
    assert kept is not None
    assert kept.status is JobStatus.DONE
    assert kept.result == "kept"


async def test_forgetting_never_deletes_a_job_its_claim_no_longer_owns(
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
    moved = await store.mark_done_batch(
        [(jobs[i], "null", 1) for i in (cancelled, picked_again, owned)], forget=True
    )
    assert moved == {(owned, jobs[owned].lease_id)}
    assert await store.get_job(owned) is None
    states = {
        row["id"]: (row["status"], row["locked_by"])
        for row in await conn.fetch("SELECT id, status, locked_by FROM jobs")
    }
    assert states == {cancelled: ("CANCELLED", "w"), picked_again: ("RUNNING", "w2")}


async def test_keep_done_zero_without_delete_rights_keeps_jobs_done_and_says_so_once(
    dsn: str, store: PgJobStore, conn: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    role = f"pqrun_nodelete_{secrets.token_hex(3)}"
    password = secrets.token_hex(8)
    await conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    try:
        await conn.execute(
            f"GRANT USAGE ON SCHEMA public TO {role};"
            f"GRANT SELECT, INSERT, UPDATE ON jobs TO {role};"
            f"GRANT SELECT ON job_type_pauses TO {role};"
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON job_workers TO {role};"
            f"GRANT USAGE ON SEQUENCE jobs_id_seq TO {role}"
        )
        parts = urlsplit(dsn)
        limited = PgJobStore(
            urlunsplit(parts._replace(netloc=f"{role}:{password}@{parts.hostname}:{parts.port}"))
        )
        ids = [await store.enqueue("t") for _ in range(20)]
        worker = Worker(
            store=limited,
            handlers={"t": lambda ctx: "ok"},
            keep_done=0,
            prune_every_seconds=3600,
            **QUICK,
        )
        await worker.start()
        try:

            async def all_done() -> bool:
                return await counts(conn) == {"DONE": len(ids)}

            await wait_until(all_done)
        finally:
            await worker.stop()
            await limited.close()
        assert caplog.text.count("this role may not delete jobs") == 1
        assert "GRANT DELETE ON jobs" in caplog.text
    finally:
        await conn.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")


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
        plain = [await store.enqueue("t") for _ in range(10)]
        worker = Worker(
            store=store,
            handlers={"held": lambda ctx: "ran", "t": lambda ctx: "ran"},
            concurrency=4,
            keep_done=0,
            prune_every_seconds=3600,
            **QUICK,
        )
        await worker.start()
        try:

            async def all_written() -> bool:
                rows = await conn.fetch("SELECT id, status FROM jobs")
                return {r["id"] for r in rows} >= set(held) and all(
                    r["status"] == "DONE" for r in rows
                )

            await wait_until(all_written)

            async def plain_written() -> bool:
                left = await conn.fetch(
                    "SELECT status FROM jobs WHERE id = ANY($1::bigint[])", plain
                )
                return all(r["status"] == "DONE" for r in left)

            await wait_until(plain_written)
        finally:
            await worker.stop()
        # Held jobs ran once and are DONE; the others went or are DONE (a batch they
        # shared with a held job was kept whole); none FAILED.
        assert (await counts(conn)).keys() == {"DONE"}
        assert caplog.text.count("could not be deleted") == 1
        assert "legal hold" in caplog.text
    finally:
        await conn.execute(
            "DROP TRIGGER refuse_deleting_kept ON jobs; DROP FUNCTION refuse_deleting_kept()"
        )


def test_only_keep_done_zero_with_pruning_on_forgets() -> None:
    store = PgJobStore("postgresql://x/db")

    def forgets(**kwargs: object) -> bool:
        worker = Worker(store=store, handlers={"t": lambda ctx: None}, **kwargs)  # type: ignore[arg-type]
        return worker.settings.forgets_done

    assert not forgets()
    assert not forgets(keep_done=timedelta(seconds=1))
    assert forgets(keep_done=0)
    assert forgets(keep_done=timedelta(0))
    assert not forgets(keep_done=0, enable_pruning=False)
