"""Workers on a database whose default isolation is stricter than READ COMMITTED."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import asyncpg
import pytest

from pqrun import Handler, JobContext, PgJobStore, Worker

from .helpers import QUICK, counts

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
