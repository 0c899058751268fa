"""The public API of the README pqrun grew from: each usage pattern, called the same way.

If one of these needs changing, a user's code breaks: treat a failure here as a
breaking change, not a test to adjust.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from fastapi import FastAPI
from fastapi.testclient import TestClient

from pqrun import (
    BackoffPolicy,
    Handler,
    Handlers,
    IdlePollPolicy,
    Job,
    JobContext,
    JobStatus,
    LoopErrorPolicy,
    PgJobStore,
    Worker,
)

from .conftest import reset_jobs
from .helpers import finished_and_created

ROOT = Path(__file__).resolve().parent.parent


def test_public_names() -> None:
    assert Job.__name__ == "Job"
    assert JobStatus.READY == "READY"
    assert callable(Handler)
    assert Handlers is not None


async def test_schema_applies_from_src_path_in_python(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        with open(ROOT / "src/pqrun/ddl.sql") as f:  # noqa: ASYNC230 - as users write it
            await conn.execute(f.read())
    finally:
        await conn.close()


async def summarize_handler(ctx: JobContext) -> dict[str, Any]:
    conversation_id = ctx.job.payload["conversation_id"]
    summary = f"summary {conversation_id}"
    await ctx.store.enqueue("embed", {"text": summary})
    return {"summary_id": 123, "tokens": 456}


async def embed_handler(ctx: JobContext) -> None:
    return None


def test_fastapi_quick_start(dsn: str) -> None:
    asyncio.run(reset_jobs(dsn))
    store = PgJobStore(dsn=dsn)
    worker = Worker(
        store=store,
        handlers={
            "summarize": summarize_handler,
            "embed": embed_handler,
        },
    )
    app = FastAPI(lifespan=worker.lifespan)

    @app.post("/summarize/{conversation_id}")
    async def create_summary(conversation_id: int) -> dict[str, int]:
        job_id = await store.enqueue(
            job_type="summarize",
            payload={"conversation_id": conversation_id},
            dedupe_key=f"summarize:conv:{conversation_id}",
        )
        return {"job_id": job_id}

    @app.get("/result/{job_id}")
    async def result(job_id: int) -> Any:
        job = await store.get_job(job_id)
        assert job is not None
        return {"status": job.status, "result": job.result}

    with TestClient(app) as client:
        job_id = client.post("/summarize/1").json()["job_id"]
        again = client.post("/summarize/1").json()["job_id"]
        if again != job_id:
            # The app's worker may finish the first job before the second request; the
            # key holds only while it is active.
            finished, created = asyncio.run(finished_and_created(dsn, job_id, again))
            assert finished is not None
            assert finished <= created
        deadline = time.monotonic() + 60
        while client.get(f"/result/{job_id}").json()["status"] != "DONE":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.get(f"/result/{job_id}").json()["result"] == {
            "summary_id": 123,
            "tokens": 456,
        }


async def test_application_enqueue_pattern(store: PgJobStore) -> None:
    job_id = await store.enqueue(
        job_type="send_email",
        payload={"user_id": 123, "template": "welcome"},
        priority=10,  # Higher = sooner
        run_after=datetime.now() + timedelta(hours=1),  # Delay execution
    )
    job = await store.get_job(job_id)
    assert job is not None
    assert job.priority == 10
    assert await store.pickup(worker_id="w") is None  # not due for an hour


async def test_per_job_timeout_and_dedupe(store: PgJobStore) -> None:
    report = await store.enqueue(
        job_type="generate_report",
        payload={"report_id": 123},
        timeout_seconds=3600,
    )
    order = await store.enqueue(
        job_type="process_order",
        payload={"order_id": 456},
        dedupe_key="process:order:456",
    )
    same = await store.enqueue(
        job_type="process_order", payload={"order_id": 456}, dedupe_key="process:order:456"
    )
    assert same == order != 0
    assert (await store.get_job(report)).timeout_seconds == 3600  # type: ignore[union-attr]


def test_code_configuration(dsn: str) -> None:
    store = PgJobStore(dsn=dsn)
    handlers: Handlers = {"summarize": summarize_handler}
    worker = Worker(
        store=store,
        handlers=handlers,
        concurrency=1,
        enable_reaper=True,
        backoff=BackoffPolicy(),
        idle_policy=IdlePollPolicy(base_seconds=1.0, max_seconds=10.0),
        reap_stale_every_seconds=60,
        default_stale_after=timedelta(minutes=20),
        worker_id="custom-worker-1",
    )
    assert worker.worker_id == "custom-worker-1"
    assert worker.concurrency == 1
    assert worker.default_stale_after == timedelta(minutes=20)
    assert [worker.backoff.retry_delay(n) for n in range(1, 7)] == [
        timedelta(minutes=1),
        timedelta(minutes=5),
        timedelta(minutes=30),
        timedelta(hours=2),
        timedelta(hours=6),
        timedelta(hours=6),
    ]


async def test_custom_policies_by_subclassing(store: PgJobStore, conn: asyncpg.Connection) -> None:
    class CustomBackoff(BackoffPolicy):
        def retry_delay(self, attempts: int) -> timedelta:
            return timedelta(seconds=2**attempts)

    class CustomLoopErrorPolicy(LoopErrorPolicy):
        def next_sleep(self, consecutive_errors: int) -> float:
            return min(0.5 * consecutive_errors, 5.0)

    async def failing(ctx: JobContext) -> None:
        raise RuntimeError("nope")

    worker = Worker(
        store=store,
        handlers={"failing": failing},
        backoff=CustomBackoff(),
        loop_error_policy=CustomLoopErrorPolicy(),
    )
    job_id = await store.enqueue("failing")
    await worker.drain()
    delay = await conn.fetchval("SELECT run_after - updated_at FROM jobs WHERE id = $1", job_id)
    assert delay == timedelta(seconds=2)


async def test_transaction_in_handler(store: PgJobStore, conn: asyncpg.Connection) -> None:
    await conn.execute("CREATE TABLE IF NOT EXISTS audit_log (note text)")
    try:

        async def my_handler(ctx: JobContext) -> dict[str, str]:
            async with ctx.store.transaction() as tx:
                await tx.execute("INSERT INTO audit_log VALUES ($1)", "one")
                await tx.execute("INSERT INTO audit_log VALUES ($1)", "two")
            return {"status": "ok"}

        job_id = await store.enqueue("mine")
        await Worker(store=store, handlers={"mine": my_handler}).drain()
        assert (await store.get_job(job_id)).result == {"status": "ok"}  # type: ignore[union-attr]
        assert await conn.fetchval("SELECT count(*) FROM audit_log") == 2
    finally:
        await conn.execute("DROP TABLE audit_log")


async def test_monitoring_and_cleanup_queries(store: PgJobStore, conn: asyncpg.Connection) -> None:
    async def ok(ctx: JobContext) -> None:
        return None

    await store.enqueue("t")
    await Worker(store=store, handlers={"t": ok}).drain()
    assert await conn.fetch("SELECT status, count(*) FROM jobs GROUP BY status")
    await conn.fetch(
        "SELECT id, job_type, last_error, attempts FROM jobs WHERE status = 'FAILED' "
        "AND finished_at > now() - interval '1 hour' ORDER BY finished_at DESC"
    )
    averages = await conn.fetch(
        "SELECT job_type, avg(duration_ms) as avg_ms, count(*) FROM jobs "
        "WHERE status = 'DONE' GROUP BY job_type"
    )
    assert averages[0]["count"] == 1
    await conn.fetch(
        "SELECT id, job_type, locked_at, locked_by FROM jobs WHERE status = 'RUNNING' "
        "AND locked_at < now() - interval '20 minutes'"
    )
    await conn.execute(
        "DELETE FROM jobs WHERE status IN ('DONE', 'FAILED', 'CANCELLED') "
        "AND finished_at < now() - interval '7 days'"
    )
