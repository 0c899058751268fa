"""The outcome writer under hostile conditions: a write that always times out, a write
slower than the statement timeout."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg

from pqrun import JobContext, JobStatus, PgJobStore, Worker

from .helpers import QUICK_POLICIES, wait_until


async def test_an_outcome_that_always_times_out_fails_its_job_with_the_reason(
    dsn: str, store: PgJobStore, conn: asyncpg.Connection
) -> None:
    """Claim 3 promises each outcome a fate: written, or FAILED with the reason. A write
    that always exceeds a server-side statement_timeout (a slow trigger of the user's on
    that row; SQLSTATE 57014) is in TRY_AGAIN_LATER: it is "put aside" and retried every
    5 s for as long as the worker lives. The job stays RUNNING with no end, its claim is
    in ``_held`` so every heartbeat protects it from the reaper, and wait() on it never
    returns. (Only a worker restart hands it to the reaper, which runs it again.)
    """
    await conn.execute(
        """
        CREATE OR REPLACE FUNCTION attack_slow() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_sleep(2);
            RETURN NEW;
        END $$;
        DROP TRIGGER IF EXISTS attack_slow ON jobs;
        CREATE TRIGGER attack_slow BEFORE UPDATE ON jobs FOR EACH ROW
        WHEN (OLD.payload ? 'slow' AND OLD.status = 'RUNNING' AND NEW.status <> 'RUNNING')
        EXECUTE FUNCTION attack_slow();
        """
    )
    ran: list[int] = []

    async def handler(ctx: JobContext) -> str:
        ran.append(ctx.job.id)
        return "ok"

    worker = Worker(
        PgJobStore(dsn, server_settings={"statement_timeout": "500"}),
        handlers={"t": handler},
        default_stale_after=2.0,
        reap_stale_every_seconds=0.1,
        **QUICK_POLICIES,
    )
    try:
        slow = await store.enqueue("t", {"slow": True})
        await worker.start()
        await wait_until(lambda: _true(slow in ran), within=10)
        other = await store.enqueue("t")

        async def finished() -> bool:
            job = await store.get_job(slow)
            return job is not None and job.status.is_finished

        async def other_finished() -> bool:
            job = await store.get_job(other)
            return job is not None and job.status.is_finished

        with contextlib.suppress(AssertionError):
            await wait_until(finished, within=12)
        # The other job's outcome may come in the writer's next batch, just after the
        # slow one's: wait for it as for any state, not one read after the slow job.
        with contextlib.suppress(AssertionError):
            await wait_until(other_finished, within=30)
        slow_job = await store.get_job(slow)
        other_job = await store.get_job(other)
    finally:
        await worker.stop()
        await worker.store.close()
        await conn.execute(
            "DROP TRIGGER IF EXISTS attack_slow ON jobs; DROP FUNCTION IF EXISTS attack_slow()"
        )
    assert other_job is not None
    assert other_job.status is JobStatus.DONE
    assert slow_job is not None
    assert slow_job.status is not JobStatus.RUNNING, (
        "six stale periods later the job is still RUNNING, its outcome retried for ever"
    )


async def _true(value: bool) -> bool:
    return value


async def test_a_write_slower_than_the_statement_timeout_is_never_committed_behind_its_back(
    dsn: str, store: PgJobStore, conn: asyncpg.Connection
) -> None:
    """A write that outlasts the client-side timeout could still commit on the server,
    after the worker gave up on it; the worker would then report "not recorded" for a
    job that is DONE. The writer's connection has a server-side statement_timeout a
    little shorter than the client's, so such a write is cancelled by the server: never
    committed, and after a few tries the job fails with the reason.
    """
    await conn.execute(
        """
        CREATE OR REPLACE FUNCTION attack_slow() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_sleep(1.5);
            RETURN NEW;
        END $$;
        DROP TRIGGER IF EXISTS attack_slow ON jobs;
        CREATE TRIGGER attack_slow BEFORE UPDATE ON jobs FOR EACH ROW
        WHEN (OLD.status = 'RUNNING' AND NEW.status = 'DONE')
        EXECUTE FUNCTION attack_slow();
        """
    )

    async def handler(ctx: JobContext) -> str:
        return "ok"

    worker = Worker(
        PgJobStore(dsn, statement_timeout=1.0), handlers={"t": handler}, **QUICK_POLICIES
    )
    try:
        job_id = await store.enqueue("t")
        counted = await asyncio.wait_for(worker.drain(), 60)
        job = await store.get_job(job_id)
    finally:
        await worker.store.close()
        await conn.execute(
            "DROP TRIGGER IF EXISTS attack_slow ON jobs; DROP FUNCTION IF EXISTS attack_slow()"
        )
    assert job is not None
    assert job.status is JobStatus.FAILED
    assert job.last_error is not None
    assert "57014" in job.last_error
    assert counted == 1
