"""Per-type flow control: concurrency limits, per-key limits and rate limits, cluster-wide."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

import asyncpg
import pytest

from pqrun import Handler, JobContext, PgJobStore, Worker, handler

from .helpers import QUICK, counts, wait_until


class Overlap:
    """Counts handlers running at once, in total and per key, and keeps the maxima."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0
        self.now_by_key: Counter[str | None] = Counter()
        self.most_by_key: Counter[str | None] = Counter()

    async def run(self, ctx: JobContext) -> None:
        key = ctx.job.concurrency_key
        self.now += 1
        self.now_by_key[key] += 1
        self.most = max(self.most, self.now)
        self.most_by_key[key] = max(self.most_by_key[key], self.now_by_key[key])
        try:
            await asyncio.sleep(0.03)
        finally:
            self.now -= 1
            self.now_by_key[key] -= 1


async def run_workers(
    dsn: str, handlers: dict[str, Handler], conn: asyncpg.Connection, jobs: int, workers: int = 6
) -> None:
    """Start ``workers`` workers (a store each, like separate processes) until all is DONE."""
    stores = [PgJobStore(dsn) for _ in range(workers)]
    crew = [
        Worker(store=s, handlers=handlers, concurrency=4, worker_id=f"w{i}", **QUICK)
        for i, s in enumerate(stores)
    ]
    try:
        for worker in crew:
            await worker.start()

        async def all_done() -> bool:
            return await counts(conn) == {"DONE": jobs}

        await wait_until(all_done, within=60)
    finally:
        for worker in crew:
            await worker.stop()
        for s in stores:
            await s.close()


@pytest.mark.parametrize("limit", [1, 3, None])
async def test_concurrency_limit_holds_across_racing_workers(
    dsn: str, store: PgJobStore, conn: asyncpg.Connection, limit: int | None
) -> None:
    # 6 workers of 4 slots race for 48 jobs. Without a limit they overlap far beyond 3:
    # that run shows the measure can see a broken limit.
    await store.enqueue_many([{"job_type": "call_api"} for _ in range(48)])
    overlap = Overlap()
    await run_workers(dsn, {"call_api": Handler(overlap.run, concurrency_limit=limit)}, conn, 48)
    if limit is None:
        assert overlap.most > 3
    else:
        assert overlap.most <= limit
        assert overlap.most >= min(limit, 2)  # the limit is used, not a lock-step queue


async def test_concurrent_limited_claims_never_take_more_than_the_limit(
    dsn: str, store: PgJobStore
) -> None:
    # The PGQueuer bug: each claim counts RUNNING jobs and takes the rest; two claims
    # counting at once both take it. Here 10 claims race on separate connections.
    limited = Handler(Overlap().run, concurrency_limit=5)
    claimers = [PgJobStore(dsn) for _ in range(10)]
    try:
        for round_number in range(15):
            await store.enqueue_many([{"job_type": "call_api"} for _ in range(20)])
            results = await asyncio.gather(
                *(
                    s.pickup_limited(f"claimer-{n}", "call_api", limited, 5)
                    for n, s in enumerate(claimers)
                )
            )
            claimed = sum(len(jobs) for jobs, _ in results)
            assert claimed == 5, f"round {round_number}: {claimed} claimed"
            async with store.connection() as c:
                await c.execute("DELETE FROM jobs")
    finally:
        for s in claimers:
            await s.close()


async def test_per_key_limit_serializes_each_key_but_not_different_keys(
    dsn: str, store: PgJobStore, conn: asyncpg.Connection
) -> None:
    await store.enqueue_many(
        [{"job_type": "sync_customer", "concurrency_key": f"customer-{n % 4}"} for n in range(32)]
        + [{"job_type": "sync_customer"} for _ in range(4)]  # no key: they share one
    )
    overlap = Overlap()
    await run_workers(
        dsn,
        {"sync_customer": Handler(overlap.run, concurrency_limit_per_key=1)},
        conn,
        36,
        workers=3,
    )
    assert set(overlap.most_by_key.values()) == {1}
    assert set(overlap.most_by_key) == {None, *(f"customer-{n}" for n in range(4))}
    assert overlap.most >= 2  # different keys did run side by side


async def test_rate_limit_spaces_starts_across_workers(
    dsn: str, store: PgJobStore, conn: asyncpg.Connection
) -> None:
    await store.enqueue_many([{"job_type": "ping"} for _ in range(12)])

    async def ping(ctx: JobContext) -> None:
        return None

    await run_workers(dsn, {"ping": Handler(ping, rate_limit=4)}, conn, 12, workers=3)
    starts = [r["locked_at"] for r in await conn.fetch("SELECT locked_at FROM jobs ORDER BY 1")]
    # At most 4 starts in any second: any 5 consecutive starts span a second or more.
    for first, fifth in zip(starts, starts[4:], strict=False):
        assert fifth - first >= timedelta(seconds=1), starts
    assert len(starts) == 12


async def test_rate_period_and_drain_waits_for_the_rate_limit(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    await store.enqueue_many([{"job_type": "ping"} for _ in range(5)])
    ran: list[int] = []

    @handler(rate_limit=2, rate_period=timedelta(milliseconds=500))
    async def ping(ctx: JobContext) -> None:
        ran.append(ctx.job.id)

    worker = Worker(store=store, handlers={"ping": ping}, concurrency=5, **QUICK)
    # drain() does not stop while due jobs only wait for the rate limit.
    assert await worker.drain() == 5
    assert sorted(ran) == list(range(1, 6))
    starts = [r["locked_at"] for r in await conn.fetch("SELECT locked_at FROM jobs ORDER BY 1")]
    for first, third in zip(starts, starts[2:], strict=False):
        assert third - first >= timedelta(milliseconds=500), starts


async def test_limited_and_unlimited_types_share_a_worker(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    overlap = Overlap()

    async def free(ctx: JobContext) -> None:
        await asyncio.sleep(0.01)

    await store.enqueue_many(
        [{"job_type": "limited"} for _ in range(6)] + [{"job_type": "free"} for _ in range(20)]
    )
    worker = Worker(
        store=store,
        handlers={"limited": Handler(overlap.run, concurrency_limit=1), "free": free},
        concurrency=8,
        **QUICK,
    )
    assert await worker.drain() == 26
    assert await counts(conn) == {"DONE": 26}
    assert overlap.most == 1


def test_handler_settings_are_checked() -> None:
    async def fn(ctx: JobContext) -> None:
        return None

    for bad in ({"concurrency_limit": 0}, {"rate_limit": 1.5}, {"concurrency_limit_per_key": True}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Handler(fn, **bad)
    with pytest.raises(ValueError, match="rate_period"):
        Handler(fn, rate_limit=1, rate_period=0)
    assert not Handler(fn).is_limited
    assert handler(concurrency_limit=2)(fn).concurrency_limit == 2


async def test_a_busy_claim_lock_holds_up_no_other_type(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    # Another session holds the claim lock of "limited" (a stuck or slow claimer).
    key = f"{store.channel}:limits:limited"
    blocker = await asyncpg.connect(store.dsn)
    try:
        await blocker.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", key)
        limited = await store.enqueue("limited")
        free = await store.enqueue("free")
        worker = Worker(
            store=store,
            handlers={
                "limited": Handler(Overlap().run, concurrency_limit=1),
                "free": Overlap().run,
            },
            **QUICK,
        )
        await worker.start()
        try:

            async def free_done() -> bool:
                return await counts(conn) == {"DONE": 1, "READY": 1}

            await wait_until(free_done, within=30)
            assert (await store.get_job(free)).status == "DONE"  # type: ignore[union-attr]
            await blocker.execute("SELECT pg_advisory_unlock_all()")

            async def all_done() -> bool:
                return await counts(conn) == {"DONE": 2}

            await wait_until(all_done, within=30)
        finally:
            await worker.stop()
        assert (await store.get_job(limited)).attempts == 1  # type: ignore[union-attr]
    finally:
        await blocker.close()


async def test_drain_runs_limited_jobs_that_other_jobs_enqueue(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    async def parent(ctx: JobContext) -> None:
        await ctx.store.enqueue("child")

    child = Handler(Overlap().run, concurrency_limit=2)
    for _ in range(5):
        await store.enqueue_many([{"job_type": "parent"} for _ in range(20)])
        worker = Worker(
            store=store, handlers={"parent": parent, "child": child}, concurrency=4, **QUICK
        )
        assert await worker.drain() == 40
        assert await counts(conn) == {"DONE": 40}
        await conn.execute("DELETE FROM jobs")


async def test_limited_and_other_types_take_turns_for_a_single_slot(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    order: list[str] = []

    async def record(ctx: JobContext) -> None:
        order.append(ctx.job.job_type)

    await store.enqueue_many([{"job_type": "limited"} for _ in range(6)])
    await store.enqueue_many([{"job_type": "urgent", "priority": 100} for _ in range(3)])
    worker = Worker(
        store=store,
        handlers={"limited": Handler(record, concurrency_limit=1), "urgent": record},
        concurrency=1,
        prefetch=0,
        **QUICK,
    )
    assert await worker.drain() == 9
    # Neither group waited for the other to run dry.
    assert order.index("urgent") < 2
    assert order.index("limited") < 2
