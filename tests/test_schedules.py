"""Recurring jobs: declared in code, stored in the database, each tick enqueued once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from pydantic import BaseModel

from pqrun import JobContext, PgJobStore, Schedule, Worker

from .helpers import QUICK, wait_until


def utc(year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_a_tick_in_the_repeated_autumn_hour_fires_once() -> None:
    nightly = Schedule("report", cron="30 1 * * *", timezone="Europe/London")
    # 2026-10-25: clocks go back at 02:00 BST, so 01:30 local happens twice.
    ticks = []
    moment = utc(2026, 10, 24, 12, 0)
    for _ in range(3):
        moment = nightly.next_tick(moment, moment)
        ticks.append(moment)
    assert ticks == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30), utc(2026, 10, 27, 1, 30)]
    # Inside the repeated hour, after the tick fired: the next one is tomorrow's, not
    # the second 01:30 (cronsim alone would answer a time before the start).
    assert nightly.tick_after(utc(2026, 10, 25, 1, 10)) == utc(2026, 10, 26, 1, 30)
    # Hourly ticks are hours of real time: both 01:00s happen.
    hourly = Schedule("poll", cron="@hourly", timezone="Europe/London")
    moment = utc(2026, 10, 24, 23, 30)
    hours = []
    for _ in range(3):
        moment = hourly.tick_after(moment)
        hours.append(moment)
    assert hours == [utc(2026, 10, 25, 0, 0), utc(2026, 10, 25, 1, 0), utc(2026, 10, 25, 2, 0)]


def test_a_tick_in_the_skipped_spring_hour_fires_when_the_clock_jumps() -> None:
    nightly = Schedule("report", cron="30 1 * * *", timezone="Europe/London")
    # 2026-03-29: 01:00 GMT becomes 02:00 BST; 01:30 does not exist that night.
    assert nightly.tick_after(utc(2026, 3, 28, 12, 0)) == utc(2026, 3, 29, 1, 0)
    assert nightly.tick_after(utc(2026, 3, 29, 1, 0)) == utc(2026, 3, 30, 0, 30)


def test_declarations_are_checked_and_quote_what_is_wrong() -> None:
    with pytest.raises(ValueError, match=r"bad cron expression '61 \* \* \* \*'"):
        Schedule("x", cron="61 * * * *")
    with pytest.raises(ValueError, match="unknown timezone 'Mars/Olympus'"):
        Schedule("x", cron="@daily", timezone="Mars/Olympus")
    with pytest.raises(ValueError, match="either cron="):
        Schedule("x")
    with pytest.raises(ValueError, match="either cron="):
        Schedule("x", cron="@daily", every=60)
    with pytest.raises(ValueError, match="every must be a positive"):
        Schedule("x", every=0)
    with pytest.raises(ValueError, match="missed must be"):
        Schedule("x", every=1, missed="all")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not JSON-serializable"):
        Schedule("x", every=1, payload={"ratio": float("nan")})
    # A datetime waits for the worker's store: its json_encoder may encode it.
    dated = Schedule("x", every=1, payload={"when": datetime.now()})
    with pytest.raises(TypeError, match=r"payload\[.when.\] is a datetime.datetime"):
        Worker(PgJobStore("postgresql://unused"), {"x": lambda ctx: None}, schedules=[dated])
    daily = Schedule("cleanup", cron="@daily", payload={"older_than_days": 30})
    assert daily.name == "cleanup"
    assert daily.tick_after(utc(2026, 1, 1, 12, 0)) == utc(2026, 1, 2, 0, 0)
    assert Schedule("sync", every=timedelta(minutes=5), name="sync-eu").every_seconds == 300
    with pytest.raises(ValueError, match="two schedules are named 'sync'"):
        Worker(
            PgJobStore("postgresql://unused"),
            {"sync": lambda ctx: None},
            schedules=[Schedule("sync", every=1), Schedule("sync", every=2)],
        )


async def test_three_workers_enqueue_each_tick_once(
    dsn: str, store: PgJobStore, conn: asyncpg.Connection
) -> None:
    async def tick(ctx: JobContext) -> None:
        return None

    stores = [PgJobStore(dsn) for _ in range(3)]
    crew = [
        Worker(
            store=s,
            handlers={"tick": tick},
            worker_id=f"w{n}",
            schedules=[Schedule("tick", every=timedelta(seconds=1), payload={"from": "code"})],
            **QUICK,
        )
        for n, s in enumerate(stores)
    ]
    began = await conn.fetchval("SELECT clock_timestamp()")
    try:
        for worker in crew:
            await worker.start()
        await asyncio.sleep(10)  # ten ticks, give or take: what is looked at, not awaited
    finally:
        for worker in crew:
            await worker.stop()
        for s in stores:
            await s.close()
    ended = await conn.fetchval("SELECT clock_timestamp()")
    rows = await conn.fetch("SELECT dedupe_key, payload::text FROM jobs ORDER BY id")
    # At most one job per tick of the time the workers ran (three workers enqueuing each
    # tick would make about three times as many); ticks a busy machine was late for are
    # enqueued once, not once each, so fewer is fine, but not next to none.
    assert 5 <= len(rows) <= (ended - began).total_seconds() + 1, rows
    assert len({row["dedupe_key"] for row in rows}) == len(rows)  # one job per tick
    assert {row["payload"] for row in rows} == {'{"from": "code"}'}
    # Each tick was enqueued by whichever worker came first, not always by the same one.
    (schedule,) = await store.list_schedules()
    assert schedule["name"] == "tick"
    assert schedule["last_job_id"] == await conn.fetchval("SELECT max(id) FROM jobs")


async def test_racing_firings_enqueue_a_due_tick_once(
    dsn: str, store: PgJobStore, conn: asyncpg.Connection
) -> None:
    schedule = Schedule("report", cron="*/5 * * * *")
    await store.declare_schedules([schedule])
    stores = [PgJobStore(dsn) for _ in range(8)]
    try:
        for _ in range(10):
            await conn.execute("UPDATE job_schedules SET next_run_at = now() - interval '1 s'")
            fired = await asyncio.gather(*(s.fire_due_schedules([schedule]) for s in stores))
            assert sum(len(ids) for ids, _ in fired) == 1
    finally:
        for s in stores:
            await s.close()
    assert await conn.fetchval("SELECT count(*) FROM jobs") == 10


@pytest.mark.parametrize(("missed", "expected"), [("once", 1), ("skip", 0)])
async def test_ticks_missed_while_no_worker_ran_are_enqueued_once_or_skipped(
    dsn: str, store: PgJobStore, conn: asyncpg.Connection, missed: str, expected: int
) -> None:
    schedule = Schedule("sync", every=timedelta(minutes=5), missed=missed)  # type: ignore[arg-type]
    await store.declare_schedules([schedule])
    # The workers were down for three hours: 36 ticks went by.
    await conn.execute("UPDATE job_schedules SET next_run_at = now() - interval '3 hours'")
    stores = [PgJobStore(dsn) for _ in range(3)]
    crew = [
        Worker(store=s, handlers={"other": lambda ctx: None}, schedules=[schedule], **QUICK)
        for s in stores
    ]
    try:
        for worker in crew:
            await worker.start()

        async def moved_on() -> bool:
            return bool(await conn.fetchval("SELECT next_run_at > now() FROM job_schedules"))

        await wait_until(moved_on)
        await asyncio.sleep(0.3)  # time for a second enqueue, were there one
    finally:
        for worker in crew:
            await worker.stop()
        for s in stores:
            await s.close()
    assert await conn.fetchval("SELECT count(*) FROM jobs WHERE job_type = 'sync'") == expected
    (row,) = await store.list_schedules()
    # Back on the original grid, in the future.
    now = await conn.fetchval("SELECT now()")
    assert now < row["next_run_at"] <= now + timedelta(minutes=5)


async def test_schedules_survive_restarts_and_follow_changes(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    await store.declare_schedules([Schedule("cleanup", cron="0 3 * * *", payload={"days": 7})])
    (first,) = await store.list_schedules()
    assert first["next_run_at"].hour == 3
    assert first["last_run_at"] is None
    # Declared again (a restart): the next tick is kept.
    await conn.execute("UPDATE job_schedules SET next_run_at = next_run_at + interval '1 min'")
    await store.declare_schedules([Schedule("cleanup", cron="0 3 * * *", payload={"days": 8})])
    (again,) = await store.list_schedules()
    assert again["next_run_at"] == first["next_run_at"] + timedelta(minutes=1)
    assert again["payload"] == {"days": 8}
    # A new timing: a new next tick.
    await store.declare_schedules([Schedule("cleanup", cron="0 4 * * *", timezone="Asia/Tokyo")])
    (changed,) = await store.list_schedules()
    assert changed["next_run_at"].astimezone(ZoneInfo("Asia/Tokyo")).hour == 4
    assert changed["timezone"] == "Asia/Tokyo"
    assert await store.remove_schedule("cleanup")
    assert not await store.remove_schedule("cleanup")
    assert await store.list_schedules() == []


def test_job_settings_of_a_schedule_are_checked_when_declared() -> None:
    with pytest.raises(ValueError, match="max_attempts must be an int >= 1, got 0"):
        Schedule("x", every=1, max_attempts=0)
    with pytest.raises(ValueError, match="priority must be an int"):
        Schedule("x", every=1, priority="high")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout_seconds must be between 1 and"):
        Schedule("x", every=1, timeout_seconds=0)
    assert Schedule("x", every=1, timeout_seconds=timedelta(minutes=2)).timeout_seconds == 120


class Report(BaseModel):
    days: int


def test_a_schedule_payload_the_handler_refuses_is_refused_at_once() -> None:
    async def report(ctx: JobContext, payload: Report) -> None:
        return None

    with pytest.raises(ValueError, match=r"(?s)schedule 'report'.*days"):
        Worker(
            PgJobStore("postgresql://unused"),
            {"report": report},
            schedules=[Schedule("report", cron="@daily", payload={"days": "many"})],
        )


async def test_a_tick_that_cannot_be_enqueued_holds_up_no_other_schedule(
    store: PgJobStore, conn: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    store.register_payload_model("report", Report)  # as another worker on this store would
    bad = Schedule("report", every=60, payload={"days": "many"})
    good = Schedule("sync", every=60)
    await store.declare_schedules([bad, good])
    await conn.execute("UPDATE job_schedules SET next_run_at = now() - interval '1 s'")
    fired, _ = await store.fire_due_schedules([bad, good])
    assert len(fired) == 1
    assert await conn.fetchval("SELECT job_type FROM jobs") == "sync"
    assert "schedule 'report': the tick due at" in caplog.text
    # Both moved on: the bad one does not come back at every look.
    assert await conn.fetchval("SELECT bool_and(next_run_at > now()) FROM job_schedules")
