"""Retention: store.prune() and the worker's pruning delete old finished jobs, and only those."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from pqrun import PgJobStore, Worker
from pqrun._store.inspection import (
    RECENT_FAILURES,
    STATUS_ACTIVE,
    STATUS_FINISHED,
    STATUS_RECENT,
)
from pqrun._store.maintenance import PRUNE_FINISHED

from .helpers import QUICK, store_of_role, wait_until

AGED = """
INSERT INTO jobs (job_type, status, finished_at)
SELECT $1, $2, now() - $3::interval FROM generate_series(1, $4)
"""


async def aged(
    conn: asyncpg.Connection, status: str, age: timedelta, count: int = 1, job_type: str = "t"
) -> None:
    await conn.execute(AGED, job_type, status, age, count)


async def by_status(conn: asyncpg.Connection) -> dict[str, int]:
    rows = await conn.fetch("SELECT status, count(*) AS n FROM jobs GROUP BY status")
    return {row["status"]: row["n"] for row in rows}


async def test_prune_deletes_finished_jobs_past_their_retention_only(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    await aged(conn, "DONE", timedelta(days=2), 3)
    await aged(conn, "DONE", timedelta(hours=1), 2)  # kept: younger than a day
    await aged(conn, "FAILED", timedelta(days=2), 4)  # kept: failures stay 7 days
    await aged(conn, "FAILED", timedelta(days=8), 5)
    await aged(conn, "CANCELLED", timedelta(days=8), 6)
    # Active jobs are never deleted, whatever their finished_at says.
    await conn.execute(
        "INSERT INTO jobs (job_type, status, finished_at, locked_by, attempts)"
        " VALUES ('t', 'READY', now() - interval '30 days', NULL, 0),"
        "        ('t', 'RUNNING', now() - interval '30 days', 'w', 1)"
    )
    pruned = await store.prune()
    assert (pruned.done, pruned.failed, pruned.cancelled) == (3, 5, 6)
    assert not pruned.busy
    assert not pruned.more
    assert await by_status(conn) == {"DONE": 2, "FAILED": 4, "READY": 1, "RUNNING": 1}
    # None keeps a status for ever; retention is the caller's choice.
    assert (await store.prune(timedelta(minutes=1), None)).total == 2
    assert (await store.prune(None, timedelta(days=1))).failed == 4
    assert await by_status(conn) == {"READY": 1, "RUNNING": 1}


async def test_prune_works_in_batches_and_stops_after_max_batches(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    await aged(conn, "DONE", timedelta(days=2), 7)
    first = await store.prune(batch_size=2, max_batches=2)
    assert first.done == 4
    assert first.more
    rest = await store.prune(batch_size=2)
    assert rest.done == 3
    assert not rest.more
    assert await by_status(conn) == {}


async def test_only_one_pruner_runs_at_a_time(
    store: PgJobStore, dsn: str, conn: asyncpg.Connection
) -> None:
    await aged(conn, "DONE", timedelta(days=2), 5)
    holder = await asyncpg.connect(dsn)
    try:
        async with holder.transaction():
            assert await holder.fetchval(
                "SELECT pg_try_advisory_xact_lock(hashtext($1 || ':prune'))", store.channel
            )
            busy = await store.prune()
            assert busy.busy
            assert busy.total == 0
        assert (await store.prune()).done == 5
    finally:
        await holder.close()


async def test_concurrent_pruners_delete_every_due_job_once(
    dsn: str, store: PgJobStore, conn: asyncpg.Connection
) -> None:
    await aged(conn, "DONE", timedelta(days=2), 3000)
    await aged(conn, "FAILED", timedelta(days=10), 1000)
    await aged(conn, "DONE", timedelta(minutes=5), 50)
    others = [PgJobStore(dsn) for _ in range(3)]
    try:
        results = await asyncio.gather(
            *(s.prune(batch_size=100) for s in [store, *others]), return_exceptions=True
        )
    finally:
        for other in others:
            await other.close()
    assert not [r for r in results if isinstance(r, BaseException)]
    # A pruner that found the lock taken stopped; whoever held it went on. What is left
    # due afterwards is deleted by one more pass, and nothing was deleted twice.
    final = await store.prune(batch_size=100)
    total = sum(r.total for r in results if not isinstance(r, BaseException)) + final.total
    assert total == 4000
    assert await by_status(conn) == {"DONE": 50}


async def test_prune_reads_the_finished_index_not_the_table(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    await conn.execute(
        """
        INSERT INTO jobs (job_type, status, finished_at)
        SELECT 't', 'DONE', now() FROM generate_series(1, 50000);
        INSERT INTO jobs (job_type, status, finished_at)
        SELECT 't', 'FAILED', now() - interval '3 days' FROM generate_series(1, 20000);
        INSERT INTO jobs (job_type, status, finished_at)
        SELECT 't', 'DONE', now() - interval '3 days' FROM generate_series(1, 300);
        INSERT INTO jobs (job_type) SELECT 't' FROM generate_series(1, 20000);
        ANALYZE jobs;
        """
    )
    tx = conn.transaction()
    await tx.start()
    try:
        raw = await conn.fetchval(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + PRUNE_FINISHED, "DONE", timedelta(days=1), 100
        )
    finally:
        await tx.rollback()
    nodes = _nodes(json.loads(raw)[0]["Plan"])
    assert "Seq Scan" not in [n["Node Type"] for n in nodes]
    scan = next(n for n in nodes if n.get("Index Name") == "jobs_finished")
    # Straight to the 100 old DONE rows: neither the recent ones nor the old failures.
    assert scan["Actual Rows"] == 100
    assert scan.get("Rows Removed by Filter", 0) == 0


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += _nodes(child)
    return found


async def test_a_running_worker_prunes_and_the_off_switch_keeps_everything(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    await aged(conn, "DONE", timedelta(hours=2), 3)
    await aged(conn, "FAILED", timedelta(hours=2), 2)
    kept = Worker(
        store=store,
        handlers={"t": lambda ctx: None},
        enable_pruning=False,
        keep_done=timedelta(hours=1),
        **QUICK,
    )
    await kept.start()
    await kept.stop()
    assert await by_status(conn) == {"DONE": 3, "FAILED": 2}

    worker = Worker(
        store=store,
        handlers={"t": lambda ctx: None},
        keep_done=timedelta(hours=1),
        keep_failed=3 * 3600,
        prune_every_seconds=0.05,
        **QUICK,
    )
    await worker.start()
    try:

        async def done_gone() -> bool:
            return await by_status(conn) == {"FAILED": 2}

        await wait_until(done_gone)
    finally:
        await worker.stop()


def test_retention_settings_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = PgJobStore("postgresql://x/db")
    worker = Worker(store=store, handlers={"t": lambda ctx: None})
    assert worker.enable_pruning
    assert (worker.keep_done, worker.keep_failed) == (timedelta(days=1), timedelta(days=7))
    assert worker.prune_interval == timedelta(minutes=5)
    monkeypatch.setenv("WORKER_PRUNE_ENABLED", "false")
    monkeypatch.setenv("WORKER_KEEP_DONE", "600")
    monkeypatch.setenv("WORKER_KEEP_FAILED", "86400")
    monkeypatch.setenv("WORKER_PRUNE_INTERVAL", "30")
    worker = Worker(store=store, handlers={"t": lambda ctx: None})
    assert not worker.enable_pruning
    assert worker.keep_done == timedelta(minutes=10)
    assert worker.keep_failed == timedelta(days=1)
    assert worker.prune_interval == timedelta(seconds=30)
    monkeypatch.setenv("WORKER_PRUNE_INTERVAL", "0")
    with pytest.raises(ValueError, match="WORKER_PRUNE_INTERVAL"):
        Worker(store=store, handlers={"t": lambda ctx: None})


async def test_status_queries_read_indexes_not_the_table(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    await conn.execute(
        """
        INSERT INTO jobs (job_type, status, finished_at)
        SELECT 't', 'DONE', now() - interval '2 hours' FROM generate_series(1, 100000);
        INSERT INTO jobs (job_type, status, finished_at)
        SELECT 't', 'FAILED', now() FROM generate_series(1, 30);
        INSERT INTO jobs (job_type) SELECT 't' FROM generate_series(1, 500);
        INSERT INTO jobs (job_type, status, locked_by, locked_at, attempts)
        SELECT 't', 'RUNNING', 'w', now(), 1 FROM generate_series(1, 50);
        ANALYZE jobs;
        """
    )
    for sql, args in (
        (STATUS_ACTIVE, (100_000,)),
        (STATUS_FINISHED, ("DONE", 1000)),
        (STATUS_FINISHED, ("FAILED", 1000)),
        (STATUS_RECENT, ("DONE", timedelta(minutes=1), 10_000)),
        (STATUS_RECENT, ("FAILED", timedelta(hours=1), 10_000)),
        (RECENT_FAILURES, (10,)),
    ):
        raw = await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, *args)
        nodes = _nodes(json.loads(raw)[0]["Plan"])
        # Whatever the plan (a Seq Scan under a LIMIT stops early too), the rows it
        # visits are bounded, never the 100,000 DONE rows.
        visited = sum(
            n.get("Actual Rows", 0) + n.get("Rows Removed by Filter", 0)
            for n in nodes
            if "Scan" in n["Node Type"]
        )
        assert visited <= 1100, (sql, visited)


async def test_a_worker_without_delete_rights_says_so_once_and_goes_on(
    dsn: str, store: PgJobStore, conn: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    async with store_of_role(conn, dsn, "pqrun_nodelete", "SELECT, INSERT, UPDATE") as limited:
        await aged(conn, "DONE", timedelta(days=3), 2)
        worker = Worker(
            store=limited, handlers={"t": lambda ctx: "ok"}, prune_every_seconds=0.05, **QUICK
        )
        await worker.start()
        try:

            async def complained() -> bool:
                return "cannot delete old jobs" in caplog.text

            await wait_until(complained)
            job_id = await limited.enqueue("t")

            async def ran() -> bool:
                job = await store.get_job(job_id)
                return job is not None and job.status == "DONE"

            await wait_until(ran)  # the worker goes on running jobs
        finally:
            await worker.stop()
    assert caplog.text.count("cannot delete old jobs") == 1
    assert "GRANT DELETE ON jobs" in caplog.text
    assert await by_status(conn) == {"DONE": 3}
