"""Helpers for testing your own handlers (docs/testing.md has the pytest recipes).

Without a database, run one handler on a made-up job:

    from pqrun.testing import run_handler

    async def test_summarize():
        result = await run_handler(summarize, {"conversation_id": 1})
        assert result == {"summary_id": 123}

With a real PostgreSQL, give each test a queue of its own and run the worker until the
queue is empty:

    from pqrun.testing import temporary_queue

    async def test_signup_sends_a_welcome_email(dsn):
        async with temporary_queue(dsn) as store:
            await store.enqueue("signup", {"user": 1})
            await Worker(store=store, handlers=HANDLERS).drain()
            [email] = await store.list_jobs(job_type="send_email")
            assert email.status == "DONE"
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import asyncpg

from ._store.maintenance import DROP_SCHEMA_STATEMENT
from ._store.rows import new_job_row
from .handlers import Handler, HandlerFunc, JobContext
from .models import JOB_COLUMNS, Job, JobStatus
from .store import PgJobStore


@dataclass
class RecordingStore:
    """Stands in for ``ctx.store`` in ``run_handler``: keeps what the handler enqueued.

    ``enqueued`` holds one dict of ``enqueue``'s arguments per job. Any other store call
    raises, naming ``temporary_queue`` for handlers that need a real database.
    """

    enqueued: list[dict[str, Any]] = field(default_factory=list)

    async def enqueue(self, job_type: str, payload: Any = None, **options: Any) -> int:
        options.pop("conn", None)
        new_job_row(job_type, payload, **options)  # the same checks as the real one
        self.enqueued.append({"job_type": job_type, "payload": payload, **options})
        return len(self.enqueued)

    async def enqueue_many(
        self, jobs: Iterable[Mapping[str, Any]], *, conn: Any = None
    ) -> list[int]:
        return [await self.enqueue(**item) for item in jobs]

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(
            f"run_handler's stand-in store has no {name!r}: it records enqueue() and "
            "enqueue_many() only. Pass store=PgJobStore(...) (see temporary_queue) for a "
            "handler that uses the database"
        )


def make_job(
    job_type: str = "test",
    payload: Any = None,
    *,
    attempt: int = 1,
    max_attempts: int = 5,
    job_id: int = 1,
    **fields: Any,
) -> Job:
    """A RUNNING job as a worker would hand it to a handler (no database involved)."""
    now = datetime.now(UTC)
    # Every column None but those a claimed job has.
    values: dict[str, Any] = dict.fromkeys(JOB_COLUMNS)
    values.update(
        id=job_id,
        job_type=job_type,
        payload={} if payload is None else payload,
        status=JobStatus.RUNNING,
        priority=0,
        attempts=attempt,
        max_attempts=max_attempts,
        run_after=now,
        locked_at=now,
        locked_by="test-worker",
        lease_id=1,
        heartbeat_at=now,
        created_at=now,
        updated_at=now,
    )
    unknown = set(fields) - set(values)
    if unknown:
        raise TypeError(f"make_job: Job has no field(s) {', '.join(sorted(unknown))}")
    values.update(fields)
    return Job(**values)


async def run_handler(
    handler: HandlerFunc | Handler,
    payload: Any = None,
    *,
    job: Job | None = None,
    store: PgJobStore | RecordingStore | None = None,
    **job_fields: Any,
) -> Any:
    """Run ``handler`` once on a made-up job and return what it returns.

    What the handler raises (``Retry``, ``Fail``, ``Snooze``, any error) reaches you
    unchanged, so ``pytest.raises`` checks it. ``job_fields`` go to ``make_job``
    (``job_type``, ``attempt``, ...), or pass a ``job``. ``ctx.store`` is ``store``:
    by default a fresh RecordingStore; pass ``store=RecordingStore()`` to read what the
    handler enqueued from its ``enqueued`` list. A plain function runs in a thread, as a
    worker runs it.
    """
    the_job = job if job is not None else make_job(payload=payload, **job_fields)
    the_store = store if store is not None else RecordingStore()
    ctx = JobContext(job=the_job, store=cast(PgJobStore, the_store), worker_id="test-worker")
    runner = handler if isinstance(handler, Handler) else Handler(handler)
    return await runner(ctx)


@asynccontextmanager
async def temporary_queue(dsn: str, **store_options: Any) -> AsyncIterator[PgJobStore]:
    """A started PgJobStore in a schema of its own, dropped with its jobs on the way out.

    Tests that run in parallel, or next to a development queue in the same database,
    never see each other's jobs. Needs the right to create schemas in the database.
    """
    schema = f"pqrun_test_{secrets.token_hex(4)}"
    store = PgJobStore(dsn, schema=schema, **store_options)
    try:
        await store.setup()
        yield store
    finally:
        await store.close()
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(await conn.fetchval(DROP_SCHEMA_STATEMENT, schema))
        finally:
            await conn.close()
