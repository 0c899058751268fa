"""Helpers for testing your own handlers (docs/testing.md has the pytest recipes).

Without a database, run one handler on a made-up job:

    from pqrun.testing import run_handler

    async def test_summarize():
        result = await run_handler(summarize, {"conversation_id": 1})
        assert result == {"summary_id": 123}

With a real PostgreSQL, give each test a queue of its own (the pytest plugin's
``pqrun_queue`` fixture, or ``temporary_queue``), run a worker until the queue is empty
and look at what was enqueued:

    from pqrun.testing import assert_enqueued, drain

    async def test_signup_sends_a_welcome_email(pqrun_queue):
        await pqrun_queue.enqueue("signup", {"user": 1})
        await drain(pqrun_queue, HANDLERS)
        [email] = await assert_enqueued(pqrun_queue, "send_email", {"user": 1})
        assert email.status == "DONE"
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import asyncpg

from ._json_encoding import JSONEncoding
from ._store.maintenance import DROP_SCHEMA_STATEMENT
from ._store.rows import new_job_row
from .handlers import Handler, HandlerFunc, Handlers, JobContext
from .models import JOB_COLUMNS, Job, JobStatus
from .store import PgJobStore
from .worker import Worker

#: How many jobs of the type asked for ``assert_enqueued`` looks at, newest first.
JOBS_LOOKED_AT = 1000
#: How many of the queue's newest jobs a failed assertion lists.
JOBS_LISTED = 20


@dataclass
class RecordingStore:
    """Stands in for ``ctx.store`` in ``run_handler``: keeps what the handler enqueued.

    ``enqueued`` holds one dict of ``enqueue``'s arguments per job. Any other store call
    raises, naming ``temporary_queue`` for handlers that need a real database.
    """

    enqueued: list[dict[str, Any]] = field(default_factory=list)
    #: As ``PgJobStore(json_encoder=...)``: what the app's store encodes, this one does.
    json_encoder: Any = None

    async def enqueue(self, job_type: str, payload: Any = None, **options: Any) -> int:
        options.pop("conn", None)
        # The same checks as the real one.
        new_job_row(job_type, payload, **options, encoding=JSONEncoding(self.json_encoder))
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


async def drain(store: PgJobStore, handlers: Handlers, **worker_options: Any) -> int:
    """Run every due job of ``handlers``' types on ``store`` with a Worker, until none is
    left (jobs they enqueue too); return the number of outcomes recorded.

    ``worker_options`` go to ``Worker`` (``backoff=``, ``concurrency=``, ...). Finished
    jobs are kept for the test to read, whatever ``WORKER_DELETE_DONE`` says, unless
    ``delete_done=True`` is given.
    """
    worker_options.setdefault("delete_done", False)
    return await Worker(store, handlers, **worker_options).drain()


async def assert_enqueued(
    store: PgJobStore, job_type: str, payload: Any = None, **fields: Any
) -> list[Job]:
    """The jobs of ``job_type`` in ``store`` that match, newest first; AssertionError
    listing the queue's jobs when none does.

    ``payload`` matches a job whose payload holds it: a dict its keys (nested dicts
    likewise), anything else all of it; it is encoded as the store encodes (its
    ``json_encoder``), so a datetime matches the string stored for it. ``fields`` are
    ``Job`` attributes the jobs must have: ``status="READY"``, ``priority=5``, ... Jobs of
    any status count (a job that already ran was enqueued too).
    """
    matching = await _matching(store, job_type, payload, fields)
    if not matching:
        raise AssertionError(
            f"no {_wanted(job_type, payload, fields)} was enqueued; "
            + await _listing(store, fields)
        )
    return matching


async def refute_enqueued(
    store: PgJobStore, job_type: str, payload: Any = None, **fields: Any
) -> None:
    """AssertionError listing them if ``store`` holds jobs that ``assert_enqueued`` with
    the same arguments would return."""
    matching = await _matching(store, job_type, payload, fields)
    if matching:
        shown = "\n".join(_describe(job, fields) for job in matching[:JOBS_LISTED])
        raise AssertionError(
            f"expected no {_wanted(job_type, payload, fields)}, found {len(matching)}:\n" + shown
        )


async def _matching(
    store: PgJobStore, job_type: str, payload: Any, fields: Mapping[str, Any]
) -> list[Job]:
    unknown = set(fields) - set(JOB_COLUMNS)
    if unknown:
        raise TypeError(
            f"Job has no field(s) {', '.join(sorted(unknown))}; match on any of "
            f"{', '.join(JOB_COLUMNS)}"
        )
    wanted = None
    if payload is not None:
        encode = JSONEncoding(getattr(store, "json_encoder", None))
        wanted = json.loads(encode(payload, "the expected payload"))
    jobs = await store.list_jobs(job_type=job_type, limit=JOBS_LOOKED_AT)
    return [
        job
        for job in jobs
        if (wanted is None or _holds(job.payload, wanted))
        and all(getattr(job, name) == value for name, value in fields.items())
    ]


def _holds(actual: Any, wanted: Any) -> bool:
    if isinstance(wanted, dict):
        return isinstance(actual, dict) and all(
            key in actual and _holds(actual[key], value) for key, value in wanted.items()
        )
    if isinstance(actual, bool) or isinstance(wanted, bool):
        return actual is wanted  # not 1 == True
    return bool(actual == wanted)


def _wanted(job_type: str, payload: Any, fields: Mapping[str, Any]) -> str:
    parts = [f"{job_type!r} job"]
    if payload is not None:
        parts.append(f"with a payload holding {payload!r}")
    if fields:
        parts.append(
            ("and " if payload is not None else "with ")
            + ", ".join(f"{name}={value!r}" for name, value in fields.items())
        )
    return " ".join(parts)


def _describe(job: Job, fields: Mapping[str, Any]) -> str:
    shown = json.dumps(job.payload, default=str)
    if len(shown) > 200:
        shown = shown[:200] + "..."
    extra = "".join(f" {name}={getattr(job, name)!r}" for name in fields if name not in ("status",))
    return f"  #{job.id} {job.job_type} {job.status.value}{extra} payload={shown}"


async def _listing(store: PgJobStore, fields: Mapping[str, Any]) -> str:
    jobs = await store.list_jobs(limit=JOBS_LISTED)
    if not jobs:
        return "the queue holds no job at all"
    more = " (the newest)" if len(jobs) == JOBS_LISTED else ""
    lines = "\n".join(_describe(job, fields) for job in jobs)
    return f"the queue holds these{more}:\n{lines}"
