"""The dashboard over HTTP (mounted in FastAPI): pages, escaping, actions and their guards."""

from __future__ import annotations

import html
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

import pqrun
from pqrun import PgJobStore
from pqrun._store.inspection import BROWSE_JOBS, STATUS_ACTIVE, STATUS_FINISHED
from pqrun.webui import CSRF_COOKIE, CSRF_FIELD

from .dashboard_server import running_dashboard
from .helpers import status_of
from .test_schema import _nodes


def client(store: PgJobStore, *, allow_actions: bool = False) -> httpx.AsyncClient:
    app = FastAPI()
    app.mount("/jobs", pqrun.dashboard(store, allow_actions=allow_actions))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app")


@pytest.fixture
async def readonly(store: PgJobStore) -> AsyncIterator[httpx.AsyncClient]:
    async with client(store) as http:
        yield http


@pytest.fixture
async def admin(store: PgJobStore) -> AsyncIterator[httpx.AsyncClient]:
    async with client(store, allow_actions=True) as http:
        yield http


async def failed_job(conn: asyncpg.Connection, job_type: str = "mail") -> int:
    job_id: int = await conn.fetchval(
        "INSERT INTO jobs (job_type, status, attempts, last_error, finished_at) "
        "VALUES ($1, 'FAILED', 5, 'SMTPError: refused', now()) RETURNING id",
        job_type,
    )
    return job_id


async def post_confirmation(http: httpx.AsyncClient, page: str) -> httpx.Response:
    """Submit a bulk action's confirmation form as the browser would."""
    form = re.search(r'<form method="post" action="([^"]+)" id="confirm">(.*?)</form>', page)
    assert form is not None, page
    fields = {
        name: html.unescape(value)
        for name, value in re.findall(r'name="([^"]+)" value="([^"]*)"', form.group(2))
    }
    return await http.post(html.unescape(form.group(1)), data=fields)


def token_in(page: str) -> str:
    found = re.search(rf'name="{CSRF_FIELD}" value="([^"]+)"', page)
    assert found, "no CSRF token in the page"
    return found.group(1)


async def test_pages_show_queues_jobs_and_a_job_with_every_value_escaped(
    store: PgJobStore, readonly: httpx.AsyncClient
) -> None:
    evil = "<script>alert(1)</script>"
    job_id = await store.enqueue(evil, {"note": evil, "n": 1})
    overview = await readonly.get("/jobs/")
    assert overview.status_code == 200
    assert "<script>alert(1)" not in overview.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in overview.text  # the queue's job type
    assert "read-only" in overview.text
    listing = await readonly.get("/jobs/jobs")
    assert f'data-job-id="{job_id}"' in listing.text
    assert "<script>alert(1)" not in listing.text
    detail = await readonly.get(f"/jobs/jobs/{job_id}")
    assert detail.status_code == 200
    assert "<script>alert(1)" not in detail.text
    assert "&lt;script&gt;" in detail.text
    assert "data-action" not in detail.text  # read-only: no action buttons
    assert detail.headers["x-frame-options"] == "DENY"
    assert "script-src 'self'" in detail.headers["content-security-policy"]
    fragment = await readonly.get(f"/jobs/_/jobs/{job_id}")
    assert fragment.status_code == 200
    assert "<html" not in fragment.text
    assert (await readonly.get("/jobs/jobs/999999")).status_code == 404
    assert (await readonly.get("/jobs/jobs/nope")).status_code == 404


async def test_the_list_filters_by_status_and_type_and_pages_back(
    store: PgJobStore, readonly: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    await conn.execute(
        "INSERT INTO jobs (job_type) SELECT 'bulk' FROM generate_series(1, 60);"
        "INSERT INTO jobs (job_type, status) VALUES ('other', 'DONE')"
    )
    failed = await failed_job(conn)
    page = (await readonly.get("/jobs/jobs", params={"status": "FAILED"})).text
    assert re.findall(r'data-job-id="(\d+)"', page) == [str(failed)]
    page = (await readonly.get("/jobs/jobs", params={"job_type": "bulk"})).text
    shown = [int(i) for i in re.findall(r'data-job-id="(\d+)"', page)]
    assert shown == list(range(60, 10, -1))  # 50 newest, newest first
    older = re.search(r'id="older" href="([^"]+)"', page)
    assert older is not None
    rest = (await readonly.get(older.group(1).replace("&amp;", "&"))).text
    assert [int(i) for i in re.findall(r'data-job-id="(\d+)"', rest)] == list(range(10, 0, -1))


async def test_actions_are_refused_when_not_allowed(
    store: PgJobStore, readonly: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    job_id = await failed_job(conn)
    page = await readonly.get(f"/jobs/jobs/{job_id}")
    token = page.cookies.get(CSRF_COOKIE) or readonly.cookies.get(CSRF_COOKIE)
    assert token
    refused = await readonly.post(f"/jobs/jobs/{job_id}/retry", data={CSRF_FIELD: token})
    assert refused.status_code == 403
    assert "allow_actions=True" in refused.text
    bulk = await readonly.post("/jobs/jobs/bulk/retry", data={CSRF_FIELD: token, "ids": job_id})
    assert bulk.status_code == 403
    assert (await readonly.get("/jobs/jobs/confirm", params={"action": "retry"})).status_code == 403
    assert (await readonly.get(f"/jobs/jobs/{job_id}/retry")).status_code == 405
    assert await status_of(store, job_id) == "FAILED"


async def test_an_action_needs_the_cookies_csrf_token(
    store: PgJobStore, admin: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    job_id = await failed_job(conn)
    page = await admin.get(f"/jobs/jobs/{job_id}")
    token = token_in(page.text)
    assert admin.cookies.get(CSRF_COOKIE) == token
    assert "HttpOnly" in page.headers["set-cookie"]
    assert "SameSite=strict" in page.headers["set-cookie"]
    url = f"/jobs/jobs/{job_id}/retry"
    assert (await admin.post(url)).status_code == 403  # no token
    assert (await admin.post(url, data={CSRF_FIELD: "x" * 43})).status_code == 403
    # The right token from another site (a form posted cross-site) is refused too.
    cross = await admin.post(url, data={CSRF_FIELD: token}, headers={"origin": "http://evil"})
    assert cross.status_code == 403
    # A forged form without the cookie: a fresh client has the token but not the cookie.
    async with client(store, allow_actions=True) as stranger:
        assert (await stranger.post(url, data={CSRF_FIELD: token})).status_code == 403
    assert await status_of(store, job_id) == "FAILED"

    done = await admin.post(url, data={CSRF_FIELD: token})
    assert done.status_code == 303
    assert done.headers["location"] == f"/jobs/jobs/{job_id}?notice=retried"
    assert await status_of(store, job_id) == "READY"
    shown = (await admin.get(done.headers["location"])).text
    assert "The job is READY again." in shown

    cancel = await admin.post(f"/jobs/jobs/{job_id}/cancel", data={CSRF_FIELD: token})
    assert cancel.status_code == 303
    assert await status_of(store, job_id) == "CANCELLED"


async def test_retry_all_failed_of_a_type(
    store: PgJobStore, admin: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    mails = [await failed_job(conn, "mail") for _ in range(3)]
    other = await failed_job(conn, "sms")
    page = await admin.get("/jobs/jobs", params={"status": "FAILED", "job_type": "mail"})
    link = re.search(r'id="retry-all" href="([^"]+)"', page.text)
    assert link is not None
    # A link to a confirmation, which moves nothing by itself.
    confirm = await admin.get(html.unescape(link.group(1)))
    assert 'data-count="3"' in confirm.text
    assert [await status_of(store, i) for i in mails] == ["FAILED"] * 3
    answer = await post_confirmation(admin, confirm.text)
    assert answer.status_code == 303
    assert "moved=3&missed=0" in answer.headers["location"]
    assert [await status_of(store, i) for i in mails] == ["READY"] * 3
    assert await status_of(store, other) == "FAILED"


async def test_odd_input_is_answered_not_crashed_on(
    store: PgJobStore, admin: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    slashed = await failed_job(conn, "reports/monthly?x=1&y")
    page = await admin.get(
        "/jobs/jobs", params={"status": "FAILED", "job_type": "reports/monthly?x=1&y"}
    )
    link = re.search(r'id="retry-all" href="([^"]+)"', page.text)
    assert link is not None
    confirm = await admin.get(html.unescape(link.group(1)))
    token = token_in(confirm.text)
    assert (await post_confirmation(admin, confirm.text)).status_code == 303
    assert await status_of(store, slashed) == "READY"
    huge = await admin.get("/jobs/jobs", params={"before": "9" * 40, "status": "NOPE"})
    assert huge.status_code == 200
    # Not silently everything: the page says the filter was not understood.
    odd = await admin.get("/jobs/jobs", params={"status": "<NOPE>"})
    assert 'No status "&lt;NOPE&gt;": the statuses are WAITING, READY, RUNNING' in odd.text
    assert "Showing jobs of every status" in odd.text
    # Any case will do.
    lower = await admin.get("/jobs/jobs", params={"status": "failed"})
    assert "bad-filter" not in lower.text
    assert '<option value="FAILED" selected>' in lower.text
    assert (await admin.get("/jobs/jobs/" + "9" * 40)).status_code == 404
    # Behind a proxy that ends TLS: an https Origin for the same host is this site.
    job_id = await failed_job(conn)
    proxied = await admin.post(
        f"/jobs/jobs/{job_id}/retry", data={CSRF_FIELD: token}, headers={"origin": "https://app"}
    )
    assert proxied.status_code == 303


async def test_retry_failed_skips_keys_an_active_job_holds(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    await conn.execute(
        """
        INSERT INTO jobs (job_type, status, dedupe_key) VALUES
            ('mail', 'FAILED', 'k1'), ('mail', 'FAILED', 'k1'),
            ('mail', 'FAILED', 'k2'), ('mail', 'READY', 'k2'), ('mail', 'FAILED', NULL)
        """
    )
    retried, taken = await store.retry_failed("mail")
    assert (retried, taken) == ([1, 5], [2, 3])  # the oldest k1, and the one without key
    assert await store.retry_failed("mail") == ([], [2, 3])
    rows = await conn.fetch("SELECT id, status FROM jobs ORDER BY id")
    assert [r["status"] for r in rows] == ["READY", "FAILED", "FAILED", "READY", "READY"]


async def test_workers_and_schedules_are_shown(
    store: PgJobStore, readonly: httpx.AsyncClient, dsn: str
) -> None:
    await store.heartbeat("worker-<b>", [], job_types=["mail"], concurrency=4)
    page = (await readonly.get("/jobs/")).text
    assert "worker-&lt;b&gt;" in page
    assert "No schedules." in page

    class WithSchedules(PgJobStore):
        async def list_schedules(self) -> list[dict[str, Any]]:
            return [
                {
                    "name": "nightly <report>",
                    "job_type": "report",
                    "cron": "0 3 * * *",
                    "every_seconds": None,
                    "timezone": "Europe/Paris",
                    "next_run_at": None,
                    "last_run_at": None,
                    "last_job_id": 42,
                }
            ]

    scheduled = WithSchedules(dsn)
    try:
        async with client(scheduled) as http:
            page = (await http.get("/jobs/_/overview")).text
    finally:
        await scheduled.close()
    assert "nightly &lt;report&gt;" in page
    assert "cron 0 3 * * *" in page
    assert 'href="/jobs/jobs/42"' in page


async def test_status_totals_are_exact_on_a_small_table_and_estimated_on_a_big_one(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    await conn.execute(
        "INSERT INTO jobs (job_type, status, finished_at) "
        "SELECT 't', 'DONE', now() FROM generate_series(1, 30);"
        "INSERT INTO jobs (job_type) SELECT 't' FROM generate_series(1, 10)"
    )
    exact = {"count": 0, "exact": True}
    assert await store.status_counts() == {
        "WAITING": exact,
        "READY": {"count": 10, "exact": True},
        "RUNNING": exact,
        "DONE": {"count": 30, "exact": True},
        "FAILED": exact,
        "CANCELLED": exact,
    }
    # Over the cap, and before the first ANALYZE: at least the cap, no estimate yet.
    unknown = await store.status_counts(count_cap=20)
    assert unknown["DONE"] == {"count": None, "exact": False, "at_least": 20}
    assert unknown["READY"] == {"count": 10, "exact": True}
    await conn.execute("ANALYZE jobs")
    # ANALYZE read every row of this table: the estimate is the count.
    assert (await store.status_counts(count_cap=20))["DONE"]["count"] == 30


async def test_a_type_whose_jobs_all_failed_is_in_the_queues_table(
    readonly: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    for _ in range(3):
        await failed_job(conn, "charge_card")
    await conn.execute("INSERT INTO jobs (job_type) VALUES ('send_email')")
    page = (await readonly.get("/jobs/")).text
    queues = page[page.index('id="queues"') : page.index("<h2>Workers</h2>")]
    row = re.search(r"<tr><td><a [^>]*>charge_card</a></td>(.*?)</tr>", queues)
    assert row is not None, queues
    cells = re.findall(r'<td class="num">(.*?)</td>', row.group(1))
    assert cells[:4] == ["0", "0", "0", "0"]
    assert "status=FAILED" in cells[4]
    assert ">3</a>" in cells[4]
    assert "send_email" in queues


async def test_the_finished_rate_is_there_at_once_and_counts_as_pqrun_top_does(
    store: PgJobStore, readonly: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    # 120 jobs finished in the last minute: 2.0/s at the first look (it read
    # "measuring", then 0.0/s, while pqrun top showed the rate).
    await conn.execute(
        "INSERT INTO jobs (job_type, status, finished_at) "
        "SELECT 't', 'DONE', now() - random() * interval '50 seconds' "
        "FROM generate_series(1, 120)"
    )
    page = (await readonly.get("/jobs/")).text
    assert re.search(r'id="finished-rate">finished, last minute<b>2\.0/s</b>', page), page
    top = await store.queue_status()
    assert top["throughput"]["DONE"]["last_minute"]["per_second"] == 2.0


async def test_a_jobs_page_shows_its_times_in_utc_beside_how_long_ago(
    store: PgJobStore, readonly: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    job_id = await store.enqueue("t")
    created = await conn.fetchval("SELECT created_at FROM jobs WHERE id = $1", job_id)
    page = (await readonly.get(f"/jobs/jobs/{job_id}")).text
    stamp = created.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    assert f"{stamp} UTC</time>" in page
    assert "ago)" in page


async def test_the_type_filter_offers_the_types_workers_schedules_and_jobs_have(
    store: PgJobStore, readonly: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    await store.heartbeat("w-1", [], job_types=["send_email", "resize"])
    await store.declare_schedules([pqrun.Schedule("nightly", every=3600)])
    await store.enqueue("adhoc<script>")
    page = (await readonly.get("/jobs/jobs")).text
    offered = re.findall(r'<option value="([^"]*)">', page[page.index('id="job-types"') :])
    assert offered == ["adhoc&lt;script&gt;", "nightly", "resize", "send_email"]


async def test_the_ready_card_agrees_with_the_queues_table_beyond_the_totals_cap(
    readonly: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    # 20,003 READY: over the totals' cap (20,000), where the card showed the planner's
    # estimate (~20,706) beside the Queues table's exact count.
    await conn.execute(
        "INSERT INTO jobs (job_type) SELECT 'bulk' FROM generate_series(1, 20003); ANALYZE jobs"
    )
    page = (await readonly.get("/jobs/")).text
    totals = page[page.index('id="totals"') : page.index("<h2>Queues</h2>")]
    assert re.search(r'status=READY"><span[^>]*>READY</span></a><b>20,003</b>', totals), totals
    queues = page[page.index('id="queues"') :]
    assert '<td class="num">20,003</td>' in queues


async def test_dashboard_queries_read_a_bounded_part_of_a_big_table(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    await conn.execute(
        """
        INSERT INTO jobs (job_type, status, finished_at)
        SELECT 'done_kind', 'DONE', now() FROM generate_series(1, 200000);
        INSERT INTO jobs (job_type, status, finished_at) VALUES ('rare', 'FAILED', now());
        INSERT INTO jobs (job_type, status, finished_at)
        SELECT 'done_kind', 'DONE', now() FROM generate_series(1, 100000);
        INSERT INTO jobs (job_type) SELECT 't' FROM generate_series(1, 300);
        ANALYZE jobs;
        """
    )
    newest = await store.max_job_id()
    window = 50_000
    plans: dict[str, list[dict[str, Any]]] = {}
    for name, sql, args in (
        ("browse rare", BROWSE_JOBS, (newest + 1, window, "FAILED", "rare", 50)),
        ("browse all", BROWSE_JOBS, (newest + 1, window, None, None, 50)),
        ("browse ready", BROWSE_JOBS, (newest + 1, window, "READY", None, 50)),
        ("queues", STATUS_ACTIVE, (20_000,)),
        ("totals", STATUS_FINISHED, ("DONE", 20_000)),
    ):
        raw = await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, *args)
        plans[name] = _nodes(json.loads(raw)[0]["Plan"])
    for name in ("browse rare", "browse all", "browse ready", "queues"):
        scans = [n for n in plans[name] if "Scan" in n["Node Type"]]
        assert "Seq Scan" not in [n["Node Type"] for n in scans], name
        for scan in scans:  # no scan visits more than the window of ids
            visited = scan["Actual Rows"] * scan.get("Actual Loops", 1)
            assert visited + scan.get("Rows Removed by Filter", 0) <= window, name
    queue_indexes = {n.get("Index Name") for n in plans["queues"]}
    assert {"jobs_ready_pickup", "jobs_running"} <= queue_indexes
    totals_scan = next(n for n in plans["totals"] if "Scan" in n["Node Type"])
    assert totals_scan["Actual Rows"] <= 20_000
    # The rare job outside the window is not found, and the list says where it looked.
    assert await store.browse_jobs(status="FAILED", job_type="rare", window=window) == []
    found = await store.browse_jobs(
        status="FAILED", job_type="rare", before=newest + 1 - 100_300, window=window
    )
    assert [row["job_type"] for row in found] == ["rare"]


def test_pqrun_dashboard_serves_read_only_by_default(dsn: str) -> None:
    with running_dashboard(dsn) as url, httpx.Client(base_url=url) as http:
        overview = http.get("/")
        assert overview.status_code == 200
        assert "read-only" in overview.text
        token = http.cookies.get(CSRF_COOKIE)
        assert token
        refused = http.post("/jobs/1/retry", data={CSRF_FIELD: token})
        assert refused.status_code == 403
