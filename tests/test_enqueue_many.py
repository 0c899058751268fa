"""enqueue_many: one statement, ids in order, dedupe keys per item."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest

from pqrun import JobStatus, PgJobStore

from .helpers import picked


async def test_ids_come_back_in_the_order_given(store: PgJobStore) -> None:
    ids = await store.enqueue_many(
        [{"job_type": "t", "payload": {"n": n}, "priority": n % 3} for n in range(1000)]
    )
    assert len(ids) == len(set(ids)) == 1000
    for n in (0, 1, 500, 999):
        job = await store.get_job(ids[n])
        assert job is not None
        assert (job.payload, job.priority) == ({"n": n}, n % 3)


async def test_every_argument_of_enqueue_is_accepted(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    (job_id,) = await store.enqueue_many(
        [
            {
                "job_type": "report",
                "payload": {"id": 7},
                "priority": 10,
                "run_after": timedelta(minutes=5),
                "dedupe_key": "report:7",
                "max_attempts": 2,
                "timeout_seconds": 3600,
            }
        ]
    )
    row = await conn.fetchrow(
        "SELECT run_after - created_at AS delay, max_attempts, timeout_seconds, dedupe_key "
        "FROM jobs WHERE id = $1",
        job_id,
    )
    assert row is not None
    assert tuple(row) == (timedelta(minutes=5), 2, 3600, "report:7")


async def test_dedupe_keys_hold_per_item(store: PgJobStore, conn: asyncpg.Connection) -> None:
    active = await store.enqueue("t", dedupe_key="a")
    finished = await store.enqueue("t", dedupe_key="b")
    assert (await picked(store, "w")).id == active  # "a" is now RUNNING
    running = await store.get_job(active)
    assert running is not None
    assert running.status is JobStatus.RUNNING
    await store.cancel(finished)
    ids = await store.enqueue_many(
        [
            {"job_type": "t", "dedupe_key": "a"},  # active: its id
            {"job_type": "t", "dedupe_key": "b"},  # only a finished job has it: new
            {"job_type": "t"},
            {"job_type": "t", "dedupe_key": "c"},  # new
            {"job_type": "t", "dedupe_key": "c"},  # same call: the same new job
        ]
    )
    assert ids[0] == active
    assert ids[1] not in (active, finished)
    assert ids[3] == ids[4]
    assert len({ids[1], ids[2], ids[3]}) == 3
    assert await conn.fetchval("SELECT count(*) FROM jobs") == 5


async def test_bad_item_is_named_and_nothing_is_written(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    with pytest.raises(TypeError, match="item 1: payload of 't' is not JSON-serializable"):
        await store.enqueue_many([{"job_type": "t"}, {"job_type": "t", "payload": {1, 2}}])
    with pytest.raises(TypeError, match=r"item 0: .*unexpected keyword argument 'type'"):
        await store.enqueue_many([{"type": "t"}])
    with pytest.raises(ValueError, match="item 2: max_attempts"):
        await store.enqueue_many([{"job_type": "t"}] * 2 + [{"job_type": "t", "max_attempts": 0}])
    assert await conn.fetchval("SELECT count(*) FROM jobs") == 0
    assert await store.enqueue_many([]) == []


async def test_joins_the_callers_transaction(store: PgJobStore) -> None:
    async def enqueue_then_fail() -> list[int]:
        async with store.transaction():
            ids = await store.enqueue_many([{"job_type": "t"}] * 3)
            raise RuntimeError(str(ids))

    with pytest.raises(RuntimeError) as raised:
        await enqueue_then_fail()
    for job_id in eval(str(raised.value)):
        assert await store.get_job(job_id) is None


async def test_ten_thousand_jobs_notify_once(store: PgJobStore, dsn: str) -> None:
    listener = await asyncpg.connect(dsn)
    payloads: list[str] = []
    try:
        await listener.add_listener(store.channel, lambda *args: payloads.append(args[3]))
        ids = await store.enqueue_many(
            [{"job_type": "t", "payload": {"n": n}} for n in range(10_000)]
        )
        later = await store.enqueue_many([{"job_type": "t", "run_after": timedelta(hours=1)}] * 2)
        await listener.execute("SELECT 1")  # let notifications arrive
    finally:
        await listener.close()
    assert len(ids) == 10_000
    assert len(later) == 2
    # Due now: how many, the first id, no due time, the type.
    assert payloads[0] == f"jobs:10000:{min(ids)}:{max(ids)}::t"
    count, first_id, last_id, due, job_type = payloads[1].split(":", 5)[1:]
    assert (count, first_id, last_id, job_type) == ("2", str(min(later)), str(max(later)), "t")
    job = await store.get_job(min(later))
    assert job is not None
    assert float(due) == pytest.approx(job.run_after.timestamp(), abs=0.001)  # when due
    assert len(payloads) == 2
