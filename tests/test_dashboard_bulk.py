"""The dashboard's job list over HTTP: the time range, the scheduled view, and bulk
actions with their confirmation, their guards against races, read-only mode and CSRF."""

from __future__ import annotations

import html
import json
import re
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from pqrun import PgJobStore
from pqrun._store.browsing import BULK_CANDIDATES, FIRST_ID_CREATED_SINCE, SCHEDULED_JOBS
from pqrun.webui import CSRF_FIELD

from .helpers import status_of, wait_until
from .test_dashboard import admin, failed_job, post_confirmation, readonly, token_in
from .test_schema import _nodes

__all__ = ["admin", "readonly"]  # fixtures


def shown(page: str) -> list[int]:
    return [int(i) for i in re.findall(r'data-job-id="(\d+)"', page)]


def confirm_count(page: str) -> int:
    found = re.search(r'id="confirm-count" data-count="(\d+)"', page)
    assert found is not None, page
    return int(found.group(1))


async def test_a_time_range_finds_a_rare_week_old_job_in_one_request(
    store: PgJobStore, readonly: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    # 120,000 jobs over two weeks, one of a rare type a week back: far past the 50,000
    # ids a page of the list walks, which needed a click of "Older jobs" per 50,000.
    await conn.execute(
        """
        INSERT INTO jobs (job_type, status, created_at, finished_at)
        SELECT 'common', 'DONE', now() - interval '14 days' + g * interval '10.08 seconds', now()
        FROM generate_series(1, 120000) AS g;
        UPDATE jobs SET job_type = 'rare' WHERE id = 60000;
        """
    )
    week_ago = await conn.fetchval("SELECT created_at FROM jobs WHERE id = 60000")
    assert (await readonly.get("/jobs/jobs", params={"job_type": "rare"})).text.count(
        'data-job-id="60000"'
    ) == 0  # without a range: not on the first page
    since = (week_ago - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    until = (week_ago + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    page = await readonly.get(
        "/jobs/jobs", params={"job_type": "rare", "since": since, "until": until}
    )
    assert shown(page.text) == [60000]
    assert 'id="older"' not in page.text  # the range holds nothing older
    assert "No older jobs created from" in page.text
    # The ids of the range are those of the jobs created in it.
    first = await store.first_id_created_since(week_ago)
    assert first == await conn.fetchval("SELECT min(id) FROM jobs WHERE created_at >= $1", week_ago)
    assert await store.first_id_created_since(datetime.now(UTC) + timedelta(days=1)) == 120001
    # A preset: the last hour holds the newest 357 jobs, 50 a page.
    hour = await readonly.get("/jobs/jobs", params={"range": "1h"})
    assert shown(hour.text) == list(range(120000, 119950, -1))
    in_hour = await conn.fetchval(
        "SELECT count(*) FROM jobs WHERE created_at >= now() - interval '1 hour'"
    )
    older = hour
    seen = 0
    while True:
        seen += len(shown(older.text))
        link = re.search(r'id="older" href="([^"]+)"', older.text)
        if link is None:
            break
        older = await readonly.get(html.unescape(link.group(1)))
    assert seen == in_hour
    bad = await readonly.get("/jobs/jobs", params={"since": "last tuesday"})
    assert '"last tuesday" is not a time for "from"' in bad.text


async def test_the_scheduled_view_lists_jobs_due_later_soonest_first(
    store: PgJobStore, readonly: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    soon = datetime.now(UTC) + timedelta(minutes=5)
    later_high = await store.enqueue("report", run_after=soon + timedelta(hours=2), priority=9)
    soonest_low = await store.enqueue("mail", run_after=soon, priority=-3)
    middle = await store.enqueue("mail", run_after=soon + timedelta(hours=1))
    await store.enqueue("mail")  # due now: not scheduled
    running = await store.enqueue("mail", run_after=soon)
    await conn.execute("UPDATE jobs SET status = 'RUNNING' WHERE id = $1", running)
    page = await readonly.get("/jobs/jobs", params={"view": "scheduled"})
    assert shown(page.text) == [soonest_low, middle, later_high]
    stamp = soon.strftime("%Y-%m-%d %H:%M:%S")
    assert f"{stamp} UTC</time>" in page.text
    assert "(in 5m)" in page.text or "(in 4m)" in page.text
    mails = await readonly.get("/jobs/jobs", params={"view": "scheduled", "job_type": "mail"})
    assert shown(mails.text) == [soonest_low, middle]
    # Pages on by due time: 60 more jobs, all due after these three.
    await store.enqueue_many(
        [{"job_type": "bulk", "run_after": soon + timedelta(days=1, seconds=n)} for n in range(60)]
    )
    first = await readonly.get("/jobs/jobs", params={"view": "scheduled"})
    assert len(shown(first.text)) == 50
    link = re.search(r'id="later" href="([^"]+)"', first.text)
    assert link is not None
    rest = await readonly.get(html.unescape(link.group(1)))
    assert len(shown(rest.text)) == 13
    assert set(shown(rest.text)).isdisjoint(shown(first.text))


async def test_bulk_retry_confirms_how_many_and_reports_a_job_moved_meanwhile(
    store: PgJobStore, admin: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    failed = [await failed_job(conn) for _ in range(3)]
    done = await conn.fetchval(
        "INSERT INTO jobs (job_type, status, finished_at) VALUES ('mail', 'DONE', now()) "
        "RETURNING id"
    )
    listing = await admin.get("/jobs/jobs", params={"status": "FAILED"})
    assert 'form="bulk"' in listing.text  # the rows can be ticked
    confirm = await admin.get(
        "/jobs/jobs/confirm",
        params=[("action", "retry"), ("status", "FAILED")] + [("id", i) for i in [*failed, done]],
    )
    assert confirm.status_code == 200
    assert confirm_count(confirm.text) == 3
    assert "Retry 3 jobs?" in confirm.text
    assert f"{done} (DONE)" in confirm.text  # ticked, and said to be left alone
    assert sorted(shown(confirm.text)) == failed
    assert [await status_of(store, i) for i in failed] == ["FAILED"] * 3  # nothing yet
    # Someone else retries one between the confirmation and the click.
    assert await store.retry(failed[0])
    before = await conn.fetchrow("SELECT * FROM jobs WHERE id = $1", failed[0])
    answer = await post_confirmation(admin, confirm.text)
    assert answer.status_code == 303
    assert "done=retry&moved=2&missed=1" in answer.headers["location"]
    assert "status=FAILED" in answer.headers["location"]  # back to the same list
    result = await admin.get(answer.headers["location"])
    assert "2 jobs retried. 1 not: no longer FAILED or CANCELLED" in result.text
    assert [await status_of(store, i) for i in failed] == ["READY"] * 3
    # The job retried by the other was not moved again.
    assert await conn.fetchrow("SELECT * FROM jobs WHERE id = $1", failed[0]) == before
    assert await status_of(store, done) == "DONE"


async def test_bulk_cancel_of_ready_and_running_jobs_and_one_moved_meanwhile(
    store: PgJobStore, admin: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    ready = await store.enqueue("mail")
    running = await store.enqueue("mail")
    finishing = await store.enqueue("mail")
    await conn.execute(
        "UPDATE jobs SET status = 'RUNNING', locked_by = 'w', attempts = 1 WHERE id = ANY($1)",
        [running, finishing],
    )
    confirm = await admin.get(
        "/jobs/jobs/confirm",
        params=[("action", "cancel"), ("id", ready), ("id", running), ("id", finishing)],
    )
    assert confirm_count(confirm.text) == 3
    # The worker finishes one first.
    await conn.execute(
        "UPDATE jobs SET status = 'DONE', finished_at = now() WHERE id = $1", finishing
    )
    answer = await post_confirmation(admin, confirm.text)
    assert "done=cancel&moved=2&missed=1" in answer.headers["location"]
    assert [await status_of(store, i) for i in (ready, running, finishing)] == [
        "CANCELLED",
        "CANCELLED",
        "DONE",
    ]


async def test_bulk_run_now_makes_scheduled_jobs_due_and_leaves_a_claimed_one(
    store: PgJobStore, admin: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    jobs = [await store.enqueue("report", run_after=later) for _ in range(3)]
    due = await store.enqueue("report")
    scheduled = await admin.get("/jobs/jobs", params={"view": "scheduled"})
    assert 'data-bulk="run-now"' in scheduled.text
    assert 'data-bulk="retry"' not in scheduled.text
    confirm = await admin.get(
        "/jobs/jobs/confirm",
        params=[("action", "run-now"), ("view", "scheduled")] + [("id", i) for i in [*jobs, due]],
    )
    assert confirm_count(confirm.text) == 3
    assert f"{due} (READY)" in confirm.text  # already due: left alone
    await conn.execute("UPDATE jobs SET status = 'RUNNING' WHERE id = $1", jobs[0])
    answer = await post_confirmation(admin, confirm.text)
    assert "done=run-now&moved=2&missed=1" in answer.headers["location"]
    assert "view=scheduled" in answer.headers["location"]
    rows = await conn.fetch(
        "SELECT id, status, run_after <= now() AS due FROM jobs WHERE id = ANY($1) ORDER BY id",
        jobs,
    )
    assert [(r["status"], r["due"]) for r in rows] == [
        ("RUNNING", False),
        ("READY", True),
        ("READY", True),
    ]


async def test_run_now_on_a_scheduled_jobs_page(
    store: PgJobStore, admin: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    job_id = await store.enqueue("report", run_after=datetime.now(UTC) + timedelta(days=1))
    page = await admin.get(f"/jobs/jobs/{job_id}")
    assert 'data-action="run now"' in page.text
    answer = await admin.post(
        f"/jobs/jobs/{job_id}/run-now", data={CSRF_FIELD: token_in(page.text)}
    )
    assert answer.headers["location"] == f"/jobs/jobs/{job_id}?notice=ran-now"
    assert await conn.fetchval("SELECT run_after <= now() FROM jobs WHERE id = $1", job_id)
    again = await admin.get(answer.headers["location"])
    assert "The job is due now." in again.text
    assert 'data-action="run now"' not in again.text  # due now: nothing to bring forward
    twice = await admin.post(f"/jobs/jobs/{job_id}/run-now", data={CSRF_FIELD: token_in(page.text)})
    assert twice.headers["location"].endswith("notice=not-ran-now")


async def test_all_jobs_matching_the_filter_are_counted_and_capped(
    store: PgJobStore,
    admin: httpx.AsyncClient,
    conn: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mails = [await failed_job(conn, "mail") for _ in range(5)]
    sms = await failed_job(conn, "sms")
    await store.enqueue("mail")
    params = {"action": "retry", "all": "1", "status": "FAILED", "job_type": "mail"}
    confirm = await admin.get("/jobs/jobs/confirm", params=params)
    assert confirm_count(confirm.text) == 5
    assert sorted(shown(confirm.text)) == mails
    assert 'id="capped"' not in confirm.text
    from pqrun._ui import web_bulk

    monkeypatch.setattr(web_bulk, "BULK_LIMIT", 3)
    capped = await admin.get("/jobs/jobs/confirm", params=params)
    assert confirm_count(capped.text) == 3
    assert "These are the first 3, the most one action takes" in capped.text
    answer = await post_confirmation(admin, capped.text)
    assert "moved=3&missed=0" in answer.headers["location"]
    statuses = [await status_of(store, i) for i in mails]
    assert sorted(statuses) == ["FAILED"] * 2 + ["READY"] * 3
    assert await status_of(store, sms) == "FAILED"
    # Cancel, all matching: READY and RUNNING jobs only, whatever else matches.
    cancel = await admin.get(
        "/jobs/jobs/confirm", params={"action": "cancel", "all": "1", "job_type": "mail"}
    )
    assert confirm_count(cancel.text) == 3  # the three retried, and the one enqueued
    # Retry from the scheduled view, all matching: no scheduled job can be retried.
    await store.enqueue("mail", run_after=timedelta(hours=1))
    scheduled_retry = await admin.get(
        "/jobs/jobs/confirm",
        params={"action": "retry", "all": "1", "view": "scheduled", "job_type": "mail"},
    )
    assert confirm_count(scheduled_retry.text) == 0


async def test_bulk_actions_are_refused_read_only_and_without_the_csrf_token(
    store: PgJobStore,
    readonly: httpx.AsyncClient,
    admin: httpx.AsyncClient,
    conn: asyncpg.Connection,
) -> None:
    job_id = await failed_job(conn)
    listing = await readonly.get("/jobs/jobs")
    assert 'form="bulk"' not in listing.text  # no boxes to tick
    assert 'id="bulk"' not in listing.text
    assert (await readonly.get(f"/jobs/jobs/confirm?action=retry&id={job_id}")).status_code == 403
    token = readonly.cookies.get("pqrun_csrf")
    refused = await readonly.post("/jobs/jobs/bulk/retry", data={CSRF_FIELD: token, "ids": job_id})
    assert refused.status_code == 403
    assert "allow_actions=True" in refused.text

    confirm = await admin.get(f"/jobs/jobs/confirm?action=retry&id={job_id}")
    token = token_in(confirm.text)
    url = "/jobs/jobs/bulk/retry"
    assert (await admin.post(url, data={"ids": str(job_id)})).status_code == 403
    forged = await admin.post(url, data={CSRF_FIELD: "x" * 43, "ids": str(job_id)})
    assert forged.status_code == 403
    cross = await admin.post(
        url, data={CSRF_FIELD: token, "ids": str(job_id)}, headers={"origin": "http://evil"}
    )
    assert cross.status_code == 403
    assert await status_of(store, job_id) == "FAILED"
    bad = await admin.post(url, data={CSRF_FIELD: token, "ids": "1,drop"})
    assert bad.status_code == 400
    assert (await admin.get("/jobs/jobs/confirm?action=nuke")).status_code == 400
    assert await status_of(store, job_id) == "FAILED"


async def test_retry_many_leaves_jobs_whose_dedupe_key_is_taken(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    await conn.execute(
        """
        INSERT INTO jobs (job_type, status, dedupe_key, finished_at) VALUES
            ('mail', 'FAILED', 'k1', now()), ('mail', 'FAILED', 'k1', now()),
            ('mail', 'FAILED', 'k2', now()), ('mail', 'READY', 'k2', NULL),
            ('mail', 'CANCELLED', NULL, now()), ('mail', 'DONE', NULL, now())
        """
    )
    # One statement: the oldest k1, and the one without a key; never a unique violation.
    assert await store.retry_many([1, 2, 3, 5, 6]) == [1, 5]
    assert await store.retry_many([1, 2, 3, 5, 6]) == []
    rows = await conn.fetch("SELECT status FROM jobs ORDER BY id")
    assert [r["status"] for r in rows] == ["READY", "FAILED", "FAILED", "READY", "READY", "DONE"]
    with pytest.raises(ValueError, match="whole number"):
        await store.cancel_many([0])


async def test_cancel_many_tells_the_workers_of_running_jobs(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    heard: list[str] = []
    await conn.add_listener(store._db.channel, lambda *args: heard.append(args[3]))
    ready = await store.enqueue("mail")
    running = [await store.enqueue("mail") for _ in range(2)]
    await conn.execute(
        "UPDATE jobs SET status = 'RUNNING', locked_by = 'w', attempts = 1 WHERE id = ANY($1)",
        running,
    )
    heard.clear()
    assert await store.cancel_many([ready, *running]) == [ready, *running]

    async def both_heard() -> bool:
        return len(heard) >= 2

    await wait_until(both_heard)
    assert sorted(heard) == sorted(f"cancel:{i}" for i in running)


async def test_the_list_s_new_reads_stay_bounded_on_a_big_table(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    await conn.execute(
        """
        INSERT INTO jobs (job_type, status, finished_at, created_at)
        SELECT 'done_kind', 'DONE', now(), now() - interval '10 days' + g * interval '2 s'
        FROM generate_series(1, 300000) AS g;
        INSERT INTO jobs (job_type, status, finished_at)
        SELECT 'f', 'FAILED', now() FROM generate_series(1, 30000);
        INSERT INTO jobs (job_type, priority, run_after)
        SELECT 'later', g % 3, now() + g * interval '1 s' FROM generate_series(1, 30000) AS g;
        ANALYZE jobs;
        """
    )
    newest = await store.max_job_id()
    cases = (
        ("first id", FIRST_ID_CREATED_SINCE, (None, timedelta(days=5)), 200),
        ("scheduled", SCHEDULED_JOBS, ("later", None, None, 5000, 50), 3 * 5000 + 50),
        ("candidates", BULK_CANDIDATES, (["FAILED"], 10_000, 0, newest + 1, "f", 1000), 10_000),
    )
    for name, sql, args, bound in cases:
        raw = await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, *args)
        scans = [n for n in _nodes(json.loads(raw)[0]["Plan"]) if "Scan" in n["Node Type"]]
        assert "Seq Scan" not in [n["Node Type"] for n in scans], name
        visited = sum(
            n["Actual Rows"] * n.get("Actual Loops", 1) + n.get("Rows Removed by Filter", 0)
            for n in scans
            if "Index" in n["Node Type"]
        )
        assert visited <= bound, (name, visited)
