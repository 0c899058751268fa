"""The vacuumer: a worker vacuums the jobs table once dead rows pile up (issue 13).

Without it, every claim steps over the dead pickup-index entries of every job claimed
since the last vacuum, and a queue on a server without autovacuum slows down to a crawl.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import asyncpg
import pytest

from pqrun import NotPermitted, PgJobStore, Worker
from pqrun._store.moves import PICKUP
from pqrun._worker import vacuumer

from .helpers import QUICK, store_of_role, wait_until

VACUUMS = "SELECT vacuum_count FROM pg_stat_user_tables WHERE relid = 'jobs'::regclass"


def busy_worker(store: PgJobStore) -> Worker:
    return Worker(store=store, handlers={"t": lambda ctx: None}, concurrency=4, **QUICK)


@asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop()


async def wait_for_a_vacuum(conn: asyncpg.Connection, before: int) -> None:
    async def vacuumed() -> bool:
        return bool((await conn.fetchval(VACUUMS) or 0) > before)

    # The statistics reach pg_stat_user_tables within seconds of the transactions.
    await wait_until(vacuumed, within=60)


async def run_jobs(store: PgJobStore, conn: asyncpg.Connection, worker: Worker, n: int) -> None:
    await conn.execute("INSERT INTO jobs (job_type) SELECT 't' FROM generate_series(1, $1)", n)

    async def all_done() -> bool:
        return bool(await conn.fetchval("SELECT count(*) FROM jobs WHERE status = 'DONE'") == n)

    await wait_until(all_done, within=120)


async def test_a_worker_vacuums_the_table_once_dead_rows_pile_up(
    store: PgJobStore, conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vacuumer, "VACUUM_AFTER_CHANGES", 400)
    monkeypatch.setattr(vacuumer, "VACUUM_CHECK_INTERVAL", 0.05)
    before = await conn.fetchval(VACUUMS) or 0
    async with running(busy_worker(store)) as worker:
        await run_jobs(store, conn, worker, 1000)  # 2,000 dead row versions

        await wait_for_a_vacuum(conn, before)

        async def few_dead_left() -> bool:
            return (await store.vacuum_stats()).dead_rows < 400

        await wait_until(few_dead_left, within=60)


async def test_the_off_switch_leaves_vacuuming_to_autovacuum(
    store: PgJobStore, conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vacuumer, "VACUUM_AFTER_CHANGES", 1)
    monkeypatch.setattr(vacuumer, "VACUUM_CHECK_INTERVAL", 0.05)
    monkeypatch.setenv("WORKER_VACUUM_ENABLED", "false")
    before = await conn.fetchval(VACUUMS) or 0
    worker = Worker(store=store, handlers={"t": lambda ctx: None}, **QUICK)
    assert not worker.enable_vacuum
    await worker.start()
    try:
        await run_jobs(store, conn, worker, 50)

        async def counted() -> bool:
            return (await store.vacuum_stats()).dead_rows > 0

        await wait_until(counted, within=60)
    finally:
        await worker.stop()
    assert (await conn.fetchval(VACUUMS) or 0) == before


async def test_store_vacuum_and_its_statistics(store: PgJobStore, conn: asyncpg.Connection) -> None:
    await conn.execute("INSERT INTO jobs (job_type) SELECT 't' FROM generate_series(1, 10)")
    await conn.execute("DELETE FROM jobs")
    before = await store.vacuum_stats()
    assert await store.vacuum()
    after = await store.vacuum_stats()
    assert after.vacuums == before.vacuums + 1
    assert after.seconds_since_vacuum is not None
    assert after.seconds_since_vacuum < 60
    assert not after.vacuuming

    async def deletes_counted() -> bool:  # and never reset by a vacuum
        return (await store.vacuum_stats()).changes >= 10

    await wait_until(deletes_counted, within=60)  # statistics arrive within seconds
    # Spaced out: not again within the hour after one just ended (whoever ran it).
    assert not await store.vacuum(min_seconds_between=3600)
    assert await store.vacuum(min_seconds_between=0.001)
    with pytest.raises(ValueError, match="min_seconds_between"):
        await store.vacuum(min_seconds_between=-1)


async def test_a_worker_that_may_not_vacuum_says_so_once_and_goes_on(
    dsn: str, store: PgJobStore, conn: asyncpg.Connection, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr(vacuumer, "VACUUM_AFTER_CHANGES", 1)
    monkeypatch.setattr(vacuumer, "VACUUM_CHECK_INTERVAL", 0.05)
    rights = "SELECT, INSERT, UPDATE, DELETE"
    async with store_of_role(conn, dsn, "pqrun_novacuum", rights) as limited:
        with pytest.raises(NotPermitted, match="may not vacuum the jobs table"):
            await limited.vacuum()
        worker = Worker(store=limited, handlers={"t": lambda ctx: "ok"}, **QUICK)
        await worker.start()
        try:
            job_id = await limited.enqueue("t")

            async def ran() -> bool:
                job = await store.get_job(job_id)
                return job is not None and job.status == "DONE"

            await wait_until(ran)

            async def complained() -> bool:
                return "does not vacuum" in caplog.text

            await wait_until(complained)
            await limited.enqueue("t")
            await wait_until(lambda: _count_done(conn, 2))
        finally:
            await worker.stop()
    assert caplog.text.count("does not vacuum") == 1
    assert "WORKER_VACUUM_ENABLED=false" in caplog.text


async def _count_done(conn: asyncpg.Connection, n: int) -> bool:
    return bool(await conn.fetchval("SELECT count(*) FROM jobs WHERE status = 'DONE'") == n)


async def test_vacuums_are_spaced_out_by_how_long_the_last_one_took(
    store: PgJobStore, conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vacuumer, "VACUUM_AFTER_CHANGES", 400)
    monkeypatch.setattr(vacuumer, "VACUUM_CHECK_INTERVAL", 0.05)
    monkeypatch.setattr(vacuumer, "VACUUM_GAP_FACTOR", 1e6)  # at least days apart
    before = await conn.fetchval(VACUUMS) or 0
    worker = busy_worker(store)
    await worker.start()
    try:
        await run_jobs(store, conn, worker, 1000)

        await wait_for_a_vacuum(conn, before)
        await conn.execute("DELETE FROM jobs")
        await run_jobs(store, conn, worker, 1000)

        async def dead_again() -> bool:
            return (await store.vacuum_stats()).dead_rows >= 400

        await wait_until(dead_again, within=60)
        await asyncio.sleep(1.0)  # twenty looks at the statistics
    finally:
        await worker.stop()
    assert (await conn.fetchval(VACUUMS) or 0) == before + 1


async def test_a_vacuum_gives_way_to_ddl_waiting_for_the_table(
    dsn: str, store: PgJobStore, conn: asyncpg.Connection
) -> None:
    """A hand-run VACUUM, unlike autovacuum, is not cancelled for whoever waits for its
    lock: re-applying ddl.sql (or a migration, a TRUNCATE) and every statement queued
    behind it would wait for the whole vacuum."""
    await conn.execute(
        "INSERT INTO jobs (job_type) SELECT 't' FROM generate_series(1, 20000);"
        "UPDATE jobs SET priority = 1"
    )
    # A vacuum slowed to a crawl: it would run for minutes.
    slow = PgJobStore(dsn, server_settings={"vacuum_cost_delay": "100", "vacuum_cost_limit": "1"})
    try:
        vacuum = asyncio.ensure_future(slow.vacuum())

        async def vacuuming() -> bool:
            return bool(
                await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM pg_stat_progress_vacuum "
                    "WHERE relid = 'jobs'::regclass)"
                )
            )

        await wait_until(vacuuming, within=60)
        ddl = PgJobStore(dsn)  # a statement of ddl.sql, which waits for the table's lock
        try:
            async with ddl.connection() as other:
                await asyncio.wait_for(
                    other.execute("ALTER TABLE jobs ADD COLUMN IF NOT EXISTS lease_id bigint"),
                    timeout=30,  # the vacuum alone would take many minutes
                )
        finally:
            await ddl.close()
        assert await asyncio.wait_for(vacuum, timeout=30) is False
        assert not await vacuuming()
    finally:
        await slow.close()


async def test_rows_an_open_transaction_still_sees_do_not_make_workers_vacuum_again(
    dsn: str, store: PgJobStore, conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vacuumer, "VACUUM_AFTER_CHANGES", 400)
    monkeypatch.setattr(vacuumer, "VACUUM_CHECK_INTERVAL", 0.05)
    monkeypatch.setattr(vacuumer, "VACUUM_FIRST_GAP", 0.0)
    monkeypatch.setattr(vacuumer, "VACUUM_GAP_FACTOR", 0.0)  # no spacing: only the rule
    assert await store.vacuum()  # nothing dead left from earlier tests
    reader = await asyncpg.connect(dsn)
    try:
        # A snapshot held open: no vacuum can remove what it may still read.
        snapshot = reader.transaction(isolation="repeatable_read")
        await snapshot.start()
        await reader.fetchval("SELECT count(*) FROM jobs")
        before = await conn.fetchval(VACUUMS) or 0
        worker = busy_worker(store)
        await worker.start()
        try:
            # 600 changes: one vacuum at 400, and too few left after it for another.
            await run_jobs(store, conn, worker, 300)

            await wait_for_a_vacuum(conn, before)

            async def no_vacuum_running() -> bool:
                return not (await store.vacuum_stats()).vacuuming

            await wait_until(no_vacuum_running, within=60)
            settled = await conn.fetchval(VACUUMS)
            await asyncio.sleep(1.0)  # twenty looks at dead rows no vacuum can remove
            assert await conn.fetchval(VACUUMS) == settled
        finally:
            await worker.stop()
        assert (await store.vacuum_stats()).dead_rows >= 400
        await snapshot.rollback()
    finally:
        await reader.close()


async def test_a_vacuum_holds_no_pooled_connection_and_runs_in_a_transaction_block(
    dsn: str, store: PgJobStore, conn: asyncpg.Connection
) -> None:
    await conn.execute(
        "INSERT INTO jobs (job_type) SELECT 't' FROM generate_series(1, 20000);"
        "UPDATE jobs SET priority = 1"
    )
    # One pooled connection, and a vacuum slowed to a crawl.
    small = PgJobStore(
        dsn, max_size=1, server_settings={"vacuum_cost_delay": "100", "vacuum_cost_limit": "1"}
    )
    try:
        vacuum = asyncio.ensure_future(small.vacuum())

        async def vacuuming() -> bool:
            return (await store.vacuum_stats()).vacuuming

        await wait_until(vacuuming, within=60)
        # The pool's one connection still answers while the vacuum runs.
        stats = await asyncio.wait_for(small.vacuum_stats(), timeout=30)
        assert stats.vacuuming
        vacuum.cancel()
        with pytest.raises(asyncio.CancelledError):
            await vacuum

        async def stopped() -> bool:
            return not await vacuuming()

        await wait_until(stopped, within=30)  # cancelled on the server too
    finally:
        await small.close()
    async with store.transaction():
        assert await store.vacuum()  # its statistics are not the transaction's snapshot


async def _has_statistics(conn: asyncpg.Connection, schema: str) -> bool:
    """Whether the planner has statistics on the schema's jobs.status."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_stats WHERE schemaname = $1 "
            "AND tablename = 'jobs' AND attname = 'status')",
            schema,
        )
    )


async def _claim_plan_sorts(conn: asyncpg.Connection) -> bool:
    """Whether a claim of 500 't' jobs sorts the READY jobs (else it walks the index)."""
    tx = conn.transaction()
    await tx.start()
    try:
        raw = await conn.fetchval("EXPLAIN (FORMAT JSON) " + PICKUP, "w", ["t"], 500, False)
    finally:
        await tx.rollback()
    return '"Sort"' in raw


async def test_a_worker_gathers_statistics_for_a_queue_that_has_none(
    dsn: str,
    conn: asyncpg.Connection,
    schemas: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A new queue (autovacuum off, or not round yet) has no statistics: the planner then
    # takes READY jobs for rare, and every claim among a backlog of them sorted them all
    # (97 ms for 500 of 200,000) instead of walking the pickup index (5 ms).
    monkeypatch.setattr(vacuumer, "VACUUM_CHECK_INTERVAL", 0.05)
    schema = schemas()
    store = PgJobStore(dsn, schema=schema)
    await store.setup()
    await conn.execute(f'SET search_path TO "{schema}"')
    # Autovacuum would analyze it too, where it runs: only the worker may here.
    await conn.execute("ALTER TABLE jobs SET (autovacuum_enabled = off)")
    await conn.execute("INSERT INTO jobs (job_type) SELECT 't' FROM generate_series(1, 50000)")
    assert not await _has_statistics(conn, schema)
    assert await _claim_plan_sorts(conn)
    # A worker for other types: the backlog stays READY.
    worker = Worker(store=store, handlers={"other": lambda ctx: None}, **QUICK)
    await worker.start()
    try:

        async def analyzed() -> bool:
            return await _has_statistics(conn, schema)

        await wait_until(analyzed, within=60)
    finally:
        await worker.stop()
        await store.close()
    assert not await _claim_plan_sorts(conn)


@pytest.mark.parametrize("vacuum_enabled", [True, False])
async def test_drain_gathers_statistics_first_on_a_queue_that_has_none(
    dsn: str,
    conn: asyncpg.Connection,
    schemas: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
    vacuum_enabled: bool,
) -> None:
    # drain() runs no vacuumer: it looks once, before its first claim.
    monkeypatch.setenv("WORKER_VACUUM_ENABLED", str(vacuum_enabled).lower())
    schema = schemas()
    store = PgJobStore(dsn, schema=schema)
    await store.setup()
    await conn.execute(f'ALTER TABLE "{schema}".jobs SET (autovacuum_enabled = off)')
    try:
        assert await store.analyze(if_missing=True) is None  # empty: nothing to tell
        await store.enqueue_many([{"job_type": "t"}] * 3000)
        assert not await _has_statistics(conn, schema)
        assert await Worker(store=store, handlers={"t": lambda ctx: None}).drain() == 3000
        assert await _has_statistics(conn, schema) is vacuum_enabled
    finally:
        await store.close()


async def test_a_failing_analyze_keeps_neither_the_vacuum_nor_a_drain_from_their_work(
    dsn: str,
    conn: asyncpg.Connection,
    schemas: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # E.g. a sample read from a big, cold table that takes longer than the client waits:
    # the statistics are a help, never a condition of vacuuming or of draining. (A new
    # table, without statistics: the one case where an ANALYZE is tried.)
    schema = schemas()
    store = PgJobStore(dsn, schema=schema)
    await store.setup()
    await conn.execute(f'SET search_path TO "{schema}"')
    await conn.execute("ALTER TABLE jobs SET (autovacuum_enabled = off)")

    async def timed_out(*, if_missing: bool = False) -> bool:
        raise TimeoutError("the ANALYZE took too long")

    monkeypatch.setattr(store, "analyze", timed_out)
    monkeypatch.setattr(vacuumer, "VACUUM_AFTER_CHANGES", 400)
    monkeypatch.setattr(vacuumer, "VACUUM_CHECK_INTERVAL", 0.05)
    try:
        await conn.execute("INSERT INTO jobs (job_type) SELECT 't' FROM generate_series(1, 200)")
        assert await busy_worker(store).drain() == 200
        await conn.execute("DELETE FROM jobs")
        before = await conn.fetchval(VACUUMS) or 0
        async with running(busy_worker(store)) as worker:
            await run_jobs(store, conn, worker, 1000)
            await wait_for_a_vacuum(conn, before)
    finally:
        await store.close()
