"""Workflows: jobs that wait for other jobs (WAITING), fan-out and fan-in, from Python
and from plain SQL; a failed dependency cancels its dependents (or lets them run)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

import pqrun
import pqrun.sync
from pqrun import Earlier, IdlePollPolicy, JobContext, JobStatus, PgJobStore, Worker

from .helpers import QUICK, picked, status_of, wait_until


async def statuses(store: PgJobStore, *ids: int) -> list[str]:
    return [await status_of(store, job_id) for job_id in ids]


async def finish(conn: Any, job_id: int, status: str = "DONE") -> None:
    await conn.execute(
        "UPDATE jobs SET status = $2, finished_at = now() WHERE id = $1", job_id, status
    )


async def test_fan_out_and_in_the_album_runs_after_every_resize_with_their_results(
    store: PgJobStore,
) -> None:
    order: list[str] = []

    async def resize(ctx: JobContext) -> dict[str, Any]:
        order.append(f"resize {ctx.payload['image']}")
        return {"thumb": f"t{ctx.payload['image']}.png"}

    async def build_album(ctx: JobContext) -> list[str]:
        order.append("album")
        return [job.result["thumb"] for job in await ctx.dependencies()]

    async with store.workflow() as wf:
        resized = [await wf.enqueue("resize", {"image": n}) for n in range(3)]
        album = await wf.enqueue("build_album", depends_on=resized)
    assert wf.ids == [*resized, album]
    assert await status_of(store, album) == "WAITING"
    assert await store.pickup("w", ["build_album"]) is None  # no claim takes it

    worker = Worker(store, {"resize": resize, "build_album": build_album}, **QUICK)
    await worker.drain()
    job = await store.get_job(album)
    assert job is not None
    assert job.status is JobStatus.DONE
    assert job.result == ["t0.png", "t1.png", "t2.png"]
    assert order[-1] == "album"


async def test_a_workflow_that_raises_enqueues_nothing(store: PgJobStore) -> None:
    async def changed_my_mind() -> None:
        async with store.workflow() as wf:
            first = await wf.enqueue("a")
            await wf.enqueue("b", depends_on=[first])
            raise RuntimeError("changed my mind")

    with pytest.raises(RuntimeError):
        await changed_my_mind()
    assert await store.list_jobs() == []


async def test_a_failed_dependency_cancels_its_dependents_and_theirs(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    charge = await store.enqueue("charge")
    ship = await store.enqueue("ship", depends_on=[charge])
    email = await store.enqueue("email", depends_on=[ship])
    audit = await store.enqueue("audit", depends_on=[charge], on_dependency_failure="run")
    await finish(conn, charge, "FAILED")
    assert await statuses(store, ship, email, audit) == ["CANCELLED", "CANCELLED", "READY"]
    shipped = await store.get_job(ship)
    emailed = await store.get_job(email)
    assert shipped is not None
    assert emailed is not None
    assert shipped.last_error == f"cancelled: job {charge}, which it depends on, ended FAILED"
    assert emailed.last_error == f"cancelled: job {ship}, which it depends on, ended CANCELLED"
    # Enqueued after the failure: cancelled at once, or READY when it runs anyway.
    late = await store.enqueue("ship", depends_on=[charge])
    anyway = await store.enqueue("audit", depends_on=[charge], on_dependency_failure="run")
    assert await statuses(store, late, anyway) == ["CANCELLED", "READY"]


async def test_run_anyway_waits_for_every_dependency_to_end(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    a, b = await store.enqueue("a"), await store.enqueue("b")
    report = await store.enqueue("report", depends_on=[a, b], on_dependency_failure="run")
    await finish(conn, a, "FAILED")
    assert await status_of(store, report) == "WAITING"
    await finish(conn, b, "CANCELLED")
    assert await status_of(store, report) == "READY"


async def test_enqueue_many_may_depend_on_earlier_items_and_sql_may_depend_too(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    first, second, joined = await store.enqueue_many(
        [
            {"job_type": "part", "payload": {"n": 1}},
            {"job_type": "part", "payload": {"n": 2}},
            {"job_type": "join", "depends_on": [Earlier(0), Earlier(1)]},
        ]
    )
    row = await conn.fetchrow("SELECT status, depends_on FROM jobs WHERE id = $1", joined)
    assert row is not None
    assert (row["status"], row["depends_on"]) == ("WAITING", [first, second])
    # From plain SQL (pg_cron, a trigger): the same column, the same waiting.
    from_sql = await conn.fetchval(
        "INSERT INTO jobs (job_type, depends_on) VALUES ('notify', ARRAY[$1::bigint]) RETURNING id",
        joined,
    )
    await finish(conn, first)
    assert await statuses(store, joined, from_sql) == ["WAITING", "WAITING"]
    await finish(conn, second)
    assert await statuses(store, joined, from_sql) == ["READY", "WAITING"]
    await finish(conn, joined)
    assert await status_of(store, from_sql) == "READY"
    with pytest.raises(ValueError, match="the first item has no earlier item"):
        await store.enqueue_many([{"job_type": "x", "depends_on": [Earlier(0)]}])
    with pytest.raises(ValueError, match=r"only on the items before it \(0 to 0\)"):
        await store.enqueue_many([{"job_type": "x"}, {"job_type": "y", "depends_on": [Earlier(1)]}])


async def test_what_cannot_be_waited_for_is_refused(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    with pytest.raises(asyncpg.ForeignKeyViolationError, match=r"do not exist .*\{999999\}"):
        await store.enqueue("x", depends_on=[999999])
    with pytest.raises(ValueError, match="both a dedupe_key and depends_on"):
        await store.enqueue("x", depends_on=[1], dedupe_key="k")
    with pytest.raises(TypeError, match="positive ints"):
        await store.enqueue("x", depends_on=[0])
    with pytest.raises(ValueError, match="'cancel' or 'run'"):
        await store.enqueue("x", depends_on=[1], on_dependency_failure="maybe")
    own = await conn.fetchval("SELECT nextval(pg_get_serial_sequence('jobs', 'id'))") + 1
    with pytest.raises(asyncpg.CheckViolationError, match="cannot depend on itself"):
        await conn.execute(
            "INSERT INTO jobs (id, job_type, depends_on) VALUES ($1, 'x', ARRAY[$1::bigint])",
            own,
        )


async def test_two_dependencies_ending_at_once_always_release_their_dependent(
    store: PgJobStore, dsn: str
) -> None:
    # Each ends in its own transaction at the same moment: neither may read the other
    # as still running after both committed (the dependent would wait for ever).
    one, two = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        for _ in range(30):
            a, b = await store.enqueue("a"), await store.enqueue("b")
            dependent = await store.enqueue("c", depends_on=[a, b])
            await asyncio.gather(finish(one, a), finish(two, b))
            assert await status_of(store, dependent) == "READY"
    finally:
        await one.close()
        await two.close()


async def test_a_dependency_ending_while_its_dependent_is_enqueued_is_seen(
    store: PgJobStore, dsn: str
) -> None:
    ender = await asyncpg.connect(dsn)
    try:
        for _ in range(30):
            parent = await store.enqueue("a")
            ended = asyncio.ensure_future(finish(ender, parent))
            dependent = await store.enqueue("c", depends_on=[parent])
            await ended
            assert await status_of(store, dependent) == "READY"
    finally:
        await ender.close()


async def test_a_dependent_is_claimed_at_once_without_waiting_for_a_poll(
    store: PgJobStore,
) -> None:
    release = asyncio.Event()

    async def first(ctx: JobContext) -> None:
        await release.wait()

    async def then(ctx: JobContext) -> str:
        return "ran"

    # Polls a minute apart: only the notification of the released dependent wakes it.
    slow_polls = IdlePollPolicy(base_seconds=60, max_seconds=60)
    handlers = {"first": first, "then": then}
    worker = Worker(store, handlers, idle_policy=slow_polls, enable_reaper=False)
    parent = await store.enqueue("first")
    dependent = await store.enqueue("then", depends_on=[parent])
    await worker.start()
    try:
        await wait_until(lambda: _is(store, parent, "RUNNING"), within=30)
        release.set()
        await wait_until(lambda: _is(store, dependent, "DONE"), within=20)
    finally:
        await worker.stop()


async def test_retry_and_cancel_of_a_dependent(store: PgJobStore, conn: asyncpg.Connection) -> None:
    parent = await store.enqueue("a")
    dependent = await store.enqueue("b", depends_on=[parent])
    assert await store.cancel(dependent)
    assert await status_of(store, dependent) == "CANCELLED"
    # Retried while its dependency runs: it waits again; once that is DONE, it is READY.
    await picked(store, "w", ["a"])
    assert await store.retry(dependent)
    assert await status_of(store, dependent) == "WAITING"
    await finish(conn, parent)
    assert await status_of(store, dependent) == "READY"


async def test_status_and_the_job_page_show_waiting_jobs_and_their_dependencies(
    store: PgJobStore,
) -> None:
    parent = await store.enqueue("resize")
    dependent = await store.enqueue("album", depends_on=[parent])
    counts = await store.status_counts()
    assert counts["WAITING"] == {"count": 1, "exact": True}
    app = FastAPI()
    app.mount("/jobs", pqrun.dashboard(store))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        child = (await http.get(f"/jobs/jobs/{dependent}")).text
        mother = (await http.get(f"/jobs/jobs/{parent}")).text
        waiting = (await http.get("/jobs/jobs?status=WAITING")).text
    assert f'href="/jobs/jobs/{parent}"' in child[child.index('id="dependencies"') :]
    assert f'href="/jobs/jobs/{dependent}"' in mother[mother.index('id="dependents"') :]
    assert f'href="/jobs/jobs/{dependent}"' in waiting


async def _is(store: PgJobStore, job_id: int, status: str) -> bool:
    return await status_of(store, job_id) == status


async def test_chains_run_one_after_another_each_woken_by_its_notifications(
    store: PgJobStore,
) -> None:
    # A dependent's enqueue locks its dependency: a worker's claim that meets that lock
    # passes the job over, and must be woken again once the lock goes (polls are a
    # minute apart here). Each chain is enqueued once the one before it is done.
    async with polling_a_minute_apart(store):
        for _ in range(150):
            a = await store.enqueue("a")
            b = await store.enqueue("b", depends_on=[a])
            await wait_until(lambda b=b: _is(store, b, "DONE"), within=20)  # type: ignore[misc]


async def test_a_dependent_due_later_is_claimed_when_due_not_at_the_next_poll(
    store: PgJobStore,
) -> None:
    async with polling_a_minute_apart(store):
        parent = await store.enqueue("a")
        later = await store.enqueue("b", depends_on=[parent], run_after=timedelta(seconds=2))
        await wait_until(lambda: _is(store, later, "DONE"), within=30)


@contextlib.asynccontextmanager
async def polling_a_minute_apart(store: PgJobStore) -> AsyncIterator[Worker]:
    """A worker of jobs "a" and "b" that only notifications wake in time."""

    async def noop(ctx: JobContext) -> None:
        return None

    slow_polls = IdlePollPolicy(base_seconds=60, max_seconds=60)
    worker = Worker(store, {"a": noop, "b": noop}, idle_policy=slow_polls, enable_reaper=False)
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop()


async def test_an_earlier_item_with_a_dedupe_key_cannot_be_named(
    store: PgJobStore, dsn: str
) -> None:
    await store.enqueue("a", dedupe_key="k")
    items: list[dict[str, Any]] = [
        {"job_type": "a", "dedupe_key": "k"},
        {"job_type": "b", "depends_on": [Earlier(0)]},
    ]
    with pytest.raises(ValueError, match="that item has a dedupe_key"):
        await store.enqueue_many(items)
    with pytest.raises(ValueError, match="that item has a dedupe_key"):
        pqrun.sync.enqueue_many(dsn, items)


async def test_ending_a_dependency_under_repeatable_read_cannot_miss_a_new_dependent(
    store: PgJobStore, dsn: str
) -> None:
    parent = await store.enqueue("a")
    first = await store.enqueue("b", depends_on=[parent])  # parent has_dependents already
    ender = await asyncpg.connect(dsn)
    try:
        transaction = ender.transaction(isolation="repeatable_read")
        await transaction.start()
        await ender.fetchval("SELECT count(*) FROM jobs")  # its snapshot, from here on
        second = await store.enqueue("b", depends_on=[parent])
        with pytest.raises(asyncpg.SerializationError):
            await finish(ender, parent)  # would not see `second`: refused instead
        await transaction.rollback()
    finally:
        await ender.close()
    async with store.connection() as conn:
        await finish(conn, parent)
    assert await statuses(store, first, second) == ["READY", "READY"]


async def test_a_deadlocked_enqueue_of_dependents_runs_again_only_when_that_is_safe(
    store: PgJobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pqrun._store import enqueue as enqueue_module

    tries = 0

    async def deadlocked(*args: Any) -> list[int]:
        nonlocal tries
        tries += 1
        raise asyncpg.DeadlockDetectedError("deadlock detected")

    parent = await store.enqueue("p")
    monkeypatch.setattr(enqueue_module, "insert_rows", deadlocked)
    with pytest.raises(asyncpg.DeadlockDetectedError):
        await store.enqueue_many([{"job_type": "a", "depends_on": [parent]}])
    assert tries == enqueue_module.DEADLOCK_TRIES  # one statement: run again
    # With a dedupe key a second statement may follow a committed first one: not again.
    tries = 0
    with pytest.raises(asyncpg.DeadlockDetectedError):
        await store.enqueue_many(
            [{"job_type": "a", "depends_on": [parent]}, {"job_type": "b", "dedupe_key": "k"}]
        )
    assert tries == 1
    # Inside the caller's transaction, which the deadlock ended: the caller's to run.
    tries = 0
    with pytest.raises(asyncpg.DeadlockDetectedError):
        async with store.transaction():
            await store.enqueue_many([{"job_type": "a", "depends_on": [parent]}])
    assert tries == 1


async def test_pqrun_sync_enqueues_a_workflow_in_the_callers_transaction(
    store: PgJobStore, dsn: str, conn: asyncpg.Connection
) -> None:
    import psycopg

    with psycopg.connect(dsn) as connection:
        first, second, joined = pqrun.sync.enqueue_many(
            connection,
            [
                {"job_type": "part"},
                {"job_type": "part"},
                {"job_type": "join", "depends_on": [Earlier(0), Earlier(1)]},
            ],
        )
        then = pqrun.sync.enqueue(connection, "notify", depends_on=[joined])
    found = await conn.fetch(
        "SELECT id, status, depends_on FROM jobs WHERE id = ANY($1::bigint[]) ORDER BY id",
        [joined, then],
    )
    assert [(r["status"], r["depends_on"]) for r in found] == [
        ("WAITING", [first, second]),
        ("WAITING", [joined]),
    ]
