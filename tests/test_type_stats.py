"""The per-type rollup (job_type_minutes): what workers write to it, and the dashboard's
page of a job type that reads it."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

import pqrun
from pqrun import Fail, JobContext, PgJobStore, Retry, Snooze, Worker
from pqrun._store.type_minutes import RUN_MS_BOUNDS, RUN_MS_BUCKETS, run_ms_bucket
from pqrun._worker.loops import Lifetime, OutageLog
from pqrun._worker.outcome import RunOutcome
from pqrun._worker.type_stats import TypeStats
from pqrun.policies import LoopErrorPolicy

from .helpers import QUICK, wait_until


async def totals(conn: asyncpg.Connection) -> dict[str, dict[str, Any]]:
    """The rollup summed over its minutes, per job type (not the queue's '' rows)."""
    rows = await conn.fetch(
        "SELECT job_type, sum(done)::int AS done, sum(failed)::int AS failed, "
        "sum(retried)::int AS retried, sum(run_ms_sum)::bigint AS run_ms_sum, "
        "array_agg(run_ms_buckets) AS buckets "
        "FROM job_type_minutes WHERE job_type <> '' AND cardinality(run_ms_buckets) > 0 "
        "GROUP BY job_type"
    )
    result = {}
    for row in rows:
        buckets = [0] * RUN_MS_BUCKETS
        for histogram in row["buckets"]:
            for index, count in enumerate(histogram):
                buckets[index] += count
        result[row["job_type"]] = {**dict(row), "buckets": buckets}
    return result


async def test_a_workers_runs_fill_the_rollup_with_what_they_came_to(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    attempts: dict[int, int] = {}

    async def ok(ctx: JobContext) -> str:
        await asyncio.sleep(0.002 * (ctx.job.id % 3))
        return "ok"

    async def flaky(ctx: JobContext) -> str:
        attempts[ctx.job.id] = attempts.get(ctx.job.id, 0) + 1
        if attempts[ctx.job.id] == 1:
            raise Retry()
        return "ok"

    async def bad(ctx: JobContext) -> None:
        raise Fail("no")

    snoozed: set[int] = set()

    async def sleepy(ctx: JobContext) -> None:
        if ctx.job.id not in snoozed:
            snoozed.add(ctx.job.id)
            raise Snooze()

    await store.enqueue_many(
        [{"job_type": "ok"}] * 5
        + [{"job_type": "flaky"}] * 3
        + [{"job_type": "bad"}] * 2
        + [{"job_type": "sleepy"}]
    )
    worker = Worker(store, {"ok": ok, "flaky": flaky, "bad": bad, "sleepy": sleepy}, **QUICK)
    await worker.drain()  # its end flushes the counts
    found = await totals(conn)
    assert {t: (v["done"], v["failed"], v["retried"]) for t, v in found.items()} == {
        "ok": (5, 0, 0),
        "flaky": (3, 0, 3),
        "bad": (0, 2, 0),
        "sleepy": (1, 0, 0),  # the snooze is no run that counts
    }
    # The run times are those the jobs table holds (each ok job ran once).
    durations = [
        r["duration_ms"]
        for r in await conn.fetch("SELECT duration_ms FROM jobs WHERE job_type = 'ok'")
    ]
    assert found["ok"]["run_ms_sum"] == sum(durations)
    expected = [0] * RUN_MS_BUCKETS
    for duration in durations:
        expected[run_ms_bucket(duration)] += 1
    assert found["ok"]["buckets"] == expected
    assert sum(found["flaky"]["buckets"]) == 6
    # The minutes are the database's, not the worker's clock's.
    minutes = await conn.fetch("SELECT DISTINCT minute FROM job_type_minutes")
    now = await conn.fetchval("SELECT date_trunc('minute', now())")
    assert all(0 <= (now - r["minute"]).total_seconds() <= 120 for r in minutes)


async def test_a_running_worker_flushes_on_its_own_and_samples_the_ready_jobs(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    async def ok(ctx: JobContext) -> None:
        return None

    # Jobs of a type nobody runs wait READY: the depth sample counts them.
    await store.enqueue_many([{"job_type": "parked"}] * 4)
    worker = Worker(store, {"ok": ok}, **QUICK)
    await worker.start()
    try:
        await store.enqueue_many([{"job_type": "ok"}] * 3)

        async def flushed() -> bool:
            found = await totals(conn)
            return found.get("ok", {}).get("done") == 3

        await wait_until(flushed, within=60)  # without stopping the worker
        depth = await conn.fetchval(
            "SELECT ready_depth FROM job_type_minutes WHERE job_type = 'parked' "
            "ORDER BY minute DESC LIMIT 1"
        )
        assert depth == 4
    finally:
        await worker.stop()


def make_stats(store: Any) -> TypeStats:
    return TypeStats(store, Lifetime("w-stats", OutageLog("w-stats"), LoopErrorPolicy()))


async def test_two_workers_adding_to_the_same_minutes_add_up(
    store: PgJobStore, conn: asyncpg.Connection, dsn: str
) -> None:
    other = PgJobStore(dsn)
    try:
        recorders = [make_stats(store), make_stats(other)]
        rounds = 20
        for _ in range(rounds):
            # Each adds to the same rows, the types in opposite orders, at the same time.
            for number, recorder in enumerate(recorders):
                types = ["a", "b", "c"] if number == 0 else ["c", "b", "a"]
                for job_type in types:
                    recorder.record(job_type, RunOutcome.DONE, 3)
                    recorder.record(job_type, RunOutcome.FAILED, 70)
                    recorder.record(job_type, RunOutcome.RETRIED, 70)
            await asyncio.gather(*(recorder.flush() for recorder in recorders))
    finally:
        await other.close()
    found = await totals(conn)
    for job_type in "abc":
        runs = found[job_type]
        assert (runs["done"], runs["failed"], runs["retried"]) == (2 * rounds,) * 3
        assert runs["run_ms_sum"] == 2 * rounds * (3 + 70 + 70)
        assert runs["buckets"][run_ms_bucket(3)] == 2 * rounds
        assert runs["buckets"][run_ms_bucket(70)] == 4 * rounds


class FailingStore:
    """A store whose rollup writes fail while ``down``."""

    def __init__(self, store: PgJobStore) -> None:
        self._store = store
        self.down = True

    async def add_type_minutes(self, rows: Any) -> None:
        if self.down:
            raise ConnectionResetError("the database went away")
        await self._store.add_type_minutes(rows)


async def test_a_failed_flush_keeps_the_counts_and_a_long_outage_drops_the_oldest(
    store: PgJobStore,
    conn: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    failing = FailingStore(store)
    recorder = make_stats(failing)
    recorder.record("t", RunOutcome.DONE, 5)
    with pytest.raises(ConnectionResetError):
        await recorder.flush()
    recorder.record("t", RunOutcome.DONE, 5)
    failing.down = False
    await recorder.flush()
    assert (await totals(conn))["t"]["done"] == 2
    # Counts older than an hour that could not be written go, said once.
    failing.down = True
    hours_ago = time.time() - 2 * 3600
    # (Nothing else runs meanwhile: no await until it is undone.)
    monkeypatch.setattr(time, "time", lambda: hours_ago)
    recorder.record("old", RunOutcome.DONE, 5)
    monkeypatch.undo()
    recorder.record("new", RunOutcome.DONE, 5)
    with caplog.at_level(logging.WARNING, logger="pqrun"):
        for _ in range(2):
            with pytest.raises(ConnectionResetError):
                await recorder.flush()
    dropped = [r for r in caplog.records if "dropped the counts per job type" in r.message]
    assert len(dropped) == 1
    assert "of 1 runs" in dropped[0].message
    failing.down = False
    await recorder.flush()
    found = await totals(conn)
    assert "old" not in found
    assert found["new"]["done"] == 1


async def test_the_depth_is_sampled_once_a_minute_and_old_rows_are_deleted(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    await store.enqueue_many([{"job_type": "a"}] * 3 + [{"job_type": "b"}])
    await conn.execute(
        "INSERT INTO job_type_minutes (job_type, minute, done) "
        "VALUES ('gone', date_trunc('minute', now()) - interval '3 days', 1), "
        "       ('seen', date_trunc('minute', now()) - interval '10 minutes', 1)"
    )
    await store.sample_ready_depth()
    await conn.execute("INSERT INTO jobs (job_type) VALUES ('a')")
    await store.sample_ready_depth()  # the same minute (most likely): nothing more
    rows = await conn.fetch(
        "SELECT job_type, minute, ready_depth FROM job_type_minutes "
        "WHERE ready_depth IS NOT NULL ORDER BY minute, job_type"
    )
    first = rows[0]["minute"]
    sampled = {r["job_type"]: r["ready_depth"] for r in rows if r["minute"] == first}
    # 'seen' ran in the last hour and has none READY: 0, not "no sample".
    assert sampled == {"": 4, "a": 3, "b": 1, "seen": 0}
    assert len({r["minute"] for r in rows}) in (1, 2)  # a second only past a minute's end
    assert await conn.fetchval("SELECT count(*) FROM job_type_minutes WHERE job_type = 'gone'") == 0


# -- the page --------------------------------------------------------------------------


@pytest.fixture
async def http(store: PgJobStore) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.mount("/jobs", pqrun.dashboard(store))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://app"
    ) as client:
        yield client


def histogram(**by_bound: int) -> list[int]:
    """Run-time buckets: ``le_50=9`` is nine runs of at most 50 ms."""
    buckets = [0] * RUN_MS_BUCKETS
    for name, count in by_bound.items():
        buckets[RUN_MS_BOUNDS.index(int(name.removeprefix("le_")))] = count
    return buckets


async def test_the_type_page_shows_counts_failure_rate_run_times_and_charts(
    store: PgJobStore, conn: asyncpg.Connection, http: httpx.AsyncClient
) -> None:
    # The last hour: 90 done and 10 failed, 4 retried; half the runs at most 50 ms, the
    # slowest twentieth between 200 and 500 ms.
    await conn.execute(
        "INSERT INTO job_type_minutes "
        "(job_type, minute, done, failed, retried, run_ms_sum, run_ms_buckets, ready_depth) "
        "VALUES ('mail/<b>', date_trunc('minute', now()) - interval '5 minutes', "
        "        90, 10, 4, 9000, $1, 7), "
        "       ('mail/<b>', date_trunc('minute', now()) - interval '3 hours', "
        "        100, 100, 0, 1000, $2, NULL), "
        "       ('other', date_trunc('minute', now()) - interval '5 minutes', 1, 1, 1, 1, $2, 1)",
        histogram(le_50=52, le_100=44, le_500=8),
        histogram(le_10=200),
    )
    await store.enqueue_many(
        [{"job_type": "mail/<b>"}] * 3
        + [{"job_type": "mail/<b>", "run_after": timedelta(days=1)}] * 2
    )
    await store.pickup_batch("w", ["mail/<b>"], 1)
    page = await http.get("/jobs/types/mail%2F%3Cb%3E")
    assert page.status_code == 200
    text = page.text
    assert "<b>mail" not in text
    assert 'id="job-type">mail/&lt;b&gt;</span>' in text

    def card(card_id: str) -> str:
        found = re.search(rf'<div class="card" id="{card_id}">[^<]*<b>([^<]*)</b>', text)
        assert found is not None, card_id
        return found.group(1)

    assert (card("ready-due"), card("scheduled"), card("running")) == ("2", "2", "1")
    assert (card("hour-done"), card("hour-failed"), card("hour-retried")) == ("90", "10", "4")
    assert card("hour-rate") == "10.0%"
    assert card("hour-p50") == "&lt;= 50 ms"
    assert card("hour-p95") == "&lt;= 500 ms"
    assert card("hour-mean") == "87 ms"  # 9000 ms over 104 runs
    assert (card("day-done"), card("day-failed")) == ("190", "110")
    assert card("day-rate") == "36.7%"
    assert card("day-p50") == "&lt;= 10 ms"
    # Six charts, each an image with a title and a description in words.
    for window in ("hour", "day"):
        for chart in ("throughput", "failures", "depth"):
            assert f'<figure class="chart" id="{window}-{chart}"><svg' in text
    assert text.count('role="img"') == 6
    throughput = text[text.index('id="hour-throughput"') :]
    throughput = throughput[: throughput.index("</figure>")]
    assert "<title" in throughput
    assert "Done per minute" in throughput
    assert re.search(r"<desc [^>]*>Runs done per minute from \d\d:\d\d to \d\d:\d\d UTC: "
                     r"90 in all, at most 90 \(at \d\d:\d\d\)\.</desc>", throughput)  # fmt: skip
    assert throughput.count("<rect") == 1  # one minute had runs
    depth = text[text.index('id="hour-depth"') :]
    assert "at most 7" in depth[: depth.index("</figure>")]
    assert 'id="hour-numbers"' in text
    assert 'id="day-numbers"' in text
    assert "style=" not in text  # the CSP allows no inline style
    # The overview, the list and a job's page link to it.
    overview = (await http.get("/jobs/")).text
    assert 'href="/jobs/types/mail%2F%3Cb%3E">mail/&lt;b&gt;</a>' in overview
    listing = (await http.get("/jobs/jobs")).text
    assert 'href="/jobs/types/mail%2F%3Cb%3E"' in listing
    assert 'href="/jobs/types/mail%2F%3Cb%3E"' in (await http.get("/jobs/jobs/1")).text
    fragment = await http.get("/jobs/_/types/mail%2F%3Cb%3E")
    assert fragment.status_code == 200
    assert "<html" not in fragment.text
    assert 'id="hour-done"' in fragment.text


async def test_the_type_page_of_a_type_with_no_runs_says_so_plainly(
    http: httpx.AsyncClient,
) -> None:
    page = (await http.get("/jobs/types/never_ran")).text
    assert re.search(r'id="hour-rate">failure rate<b>-</b>', page)
    assert re.search(r'id="hour-p50">run time p50<b>-</b>', page)
    assert "no samples." in page
    assert "<rect" not in page
    assert (await http.get("/jobs/types/")).status_code == 404
