"""Pausing a job type cluster-wide: no claim of any worker takes a paused type's jobs,
running ones finish, the pause outlives restarts, resuming wakes the workers; and
`pqrun pause|resume|paused`, `pqrun status`, `pqrun top`, the metrics and the dashboard
show it.

The claims across processes run two worker processes (tests/pause_worker.py) that
record their runs on a connection of their own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from pqrun import Handler, IdlePollPolicy, JobContext, PgJobStore, Worker
from pqrun.metrics import PrometheusMetrics, instrument
from pqrun.top import render
from pqrun.webui import CSRF_COOKIE, CSRF_FIELD

from .helpers import QUICK, status_of, wait_until
from .pause_worker import IDLE_POLL_SECONDS
from .test_cli_commands import pqrun
from .test_dashboard import client, token_in
from .test_metrics import samples, value

ROOT = Path(__file__).resolve().parent.parent
#: A resumed type's jobs run within this, well short of the workers' idle poll: they
#: were woken, not found by a poll.
WOKEN_WITHIN = 20.0


async def statuses(conn: asyncpg.Connection, ids: list[int]) -> set[str]:
    rows = await conn.fetch("SELECT DISTINCT status FROM jobs WHERE id = ANY($1)", ids)
    return {row["status"] for row in rows}


async def test_no_claim_takes_a_paused_type_whatever_types_it_asks_for(
    store: PgJobStore, other: PgJobStore, conn: asyncpg.Connection
) -> None:
    # The paused type goes first by priority: without the pause, every claim takes it.
    paused_ids = await store.enqueue_many([{"job_type": "a", "priority": 10}] * 3)
    other_ids = await store.enqueue_many([{"job_type": "b"}] * 3)
    assert await store.pause("a", reason="incident 42: the mail relay is down")
    assert not await other.pause("a", reason="a second pause")  # the first one stays
    assert [(p["job_type"], p["reason"]) for p in await other.paused_types()] == [
        ("a", "incident 42: the mail relay is down")
    ]
    # Any store, any worker id, any types asked for (all of them: None).
    assert await other.pickup_batch("w2", ["a"], 10) == []
    claimed = await other.pickup_batch("w2", None, 10)
    assert sorted(job.id for job in claimed) == other_ids
    assert await statuses(conn, paused_ids) == {"READY"}
    # Nor does a worker woken by their insert wake every other for them (left behind).
    assert not await other.jobs_left_behind([("a", paused_ids[0], paused_ids[-1])])

    assert await other.resume("a")
    assert await other.jobs_left_behind([("a", paused_ids[0], paused_ids[-1])])
    assert not await store.resume("a")
    assert await store.paused_types() == []
    claimed = await store.pickup_batch("w1", ["a"], 10)
    assert sorted(job.id for job in claimed) == paused_ids


async def test_a_paused_limited_type_is_not_claimed(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    ids = await store.enqueue_many([{"job_type": "limited"}] * 2)
    handler = Handler(lambda ctx: None, concurrency_limit=5, rate_limit=100)
    await store.pause("limited")
    claimed, _ = await store.pickup_limited("w", "limited", handler, 10)
    assert claimed == []
    assert await statuses(conn, ids) == {"READY"}
    await store.resume("limited")
    claimed, _ = await store.pickup_limited("w", "limited", handler, 10)
    assert sorted(job.id for job in claimed) == ids


async def test_a_pause_names_a_type_and_a_short_reason(store: PgJobStore) -> None:
    with pytest.raises(ValueError, match="job_type must be a non-empty string"):
        await store.pause("")
    with pytest.raises(ValueError, match="NUL"):
        await store.pause("a\x00b")
    with pytest.raises(ValueError, match="at most 1,000"):
        await store.pause("a", reason="x" * 1001)
    assert await store.paused_types() == []


async def test_resume_wakes_an_idle_worker_at_once(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    ran: list[int] = []

    async def record(ctx: JobContext) -> None:
        ran.append(ctx.job.id)

    worker = Worker(
        store=store,
        handlers={"a": record, "b": record},
        **{**QUICK, "idle_policy": IdlePollPolicy(IDLE_POLL_SECONDS, IDLE_POLL_SECONDS)},
    )
    await store.pause("a")
    await worker.start()
    try:
        paused_ids = await store.enqueue_many([{"job_type": "a", "priority": 1}] * 3)
        other_id = await store.enqueue("b")  # the insert wakes the worker: it claims

        async def other_done() -> bool:
            return await status_of(store, other_id) == "DONE"

        await wait_until(other_done)
        assert ran == [other_id]
        assert await statuses(conn, paused_ids) == {"READY"}
        # Idle now for IDLE_POLL_SECONDS: only the resume's notification wakes it sooner.
        assert await store.resume("a")

        async def resumed_done() -> bool:
            return await statuses(conn, paused_ids) == {"DONE"}

        await wait_until(resumed_done, within=WOKEN_WITHIN)
    finally:
        await worker.stop()


def start_worker(dsn: str, name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.pause_worker", dsn, name],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_worker(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
async def runs(store: PgJobStore, conn: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    await conn.execute(
        "DROP TABLE IF EXISTS pause_runs, pause_gate;"
        "CREATE TABLE pause_runs (job_id bigint NOT NULL, job_type text NOT NULL,"
        " worker text NOT NULL);"
        "CREATE TABLE pause_gate (open boolean NOT NULL); INSERT INTO pause_gate VALUES (false)"
    )
    yield conn
    await conn.execute("DROP TABLE IF EXISTS pause_runs, pause_gate")


async def test_two_worker_processes_leave_a_paused_type_and_run_the_rest(
    dsn: str, store: PgJobStore, runs: asyncpg.Connection
) -> None:
    workers = [start_worker(dsn, "A"), start_worker(dsn, "B")]

    async def listening(*names: str) -> bool:
        heard = await runs.fetchval(
            "SELECT count(*) FROM job_workers WHERE worker_id = ANY($1) AND wake_capacity > 0",
            list(names),
        )
        return bool(heard == len(names))

    try:
        await wait_until(lambda: listening("A", "B"), within=60)
        gated = await store.enqueue("a", {"gate": True}, priority=10)

        async def gated_running() -> bool:
            return bool(await runs.fetchval("SELECT count(*) FROM pause_runs") == 1)

        await wait_until(gated_running, within=60)
        assert await store.pause("a", reason="incident")
        # Ahead of b by priority: a claim that did not check the pause would take them.
        paused_ids = await store.enqueue_many([{"job_type": "a", "priority": 10}] * 6)
        other_ids = await store.enqueue_many([{"job_type": "b"}] * 6)

        async def others_done() -> bool:
            return await statuses(runs, other_ids) == {"DONE"}

        await wait_until(others_done, within=60)
        # Both workers claimed b's (by the notification's turns, at least one did).
        assert await statuses(runs, paused_ids) == {"READY"}
        assert await status_of(store, gated) == "RUNNING"  # the running one goes on...
        await runs.execute("UPDATE pause_gate SET open = true")

        async def gated_done() -> bool:
            return await status_of(store, gated) == "DONE"

        await wait_until(gated_done, within=60)  # ... and finishes
        started = await runs.fetch("SELECT job_id FROM pause_runs WHERE job_type = 'a'")
        assert [row["job_id"] for row in started] == [gated]

        # Every worker restarts: the pause is in the database, not in them.
        for process in workers:
            stop_worker(process)
        workers = [start_worker(dsn, "C")]
        await wait_until(lambda: listening("C"), within=60)
        later = await store.enqueue("b")

        async def later_done() -> bool:
            return await status_of(store, later) == "DONE"

        await wait_until(later_done, within=60)
        assert await statuses(runs, paused_ids) == {"READY"}
        assert [p["job_type"] for p in await store.paused_types()] == ["a"]

        # C has nothing to claim and polls every IDLE_POLL_SECONDS: the resume wakes it.
        assert await store.resume("a")

        async def resumed_done() -> bool:
            return await statuses(runs, paused_ids) == {"DONE"}

        await wait_until(resumed_done, within=WOKEN_WITHIN)
        ran = await runs.fetch("SELECT job_id, worker FROM pause_runs WHERE job_type = 'a'")
        assert {row["job_id"] for row in ran} == {gated, *paused_ids}
        assert {row["worker"] for row in ran if row["job_id"] != gated} == {"C"}
    finally:
        for process in workers:
            stop_worker(process)


async def test_pqrun_pause_resume_paused_and_status(
    store: PgJobStore, dsn: str, conn: asyncpg.Connection
) -> None:
    await store.enqueue_many([{"job_type": "mail"}] * 2)
    paused = await pqrun("pause", "mail", "--reason", "relay down", "--dsn", dsn)
    assert paused.returncode == 0, paused.stderr
    assert "job type mail paused" in paused.stdout
    assert "(2 now)" in paused.stdout
    assert "check the name" not in paused.stderr
    again = await pqrun("pause", "mail", "--dsn", dsn)
    assert again.returncode == 0, again.stderr
    assert "paused already" in again.stdout
    # A type with no jobs can be paused ahead of them (with a word on the name: a typo
    # mid-incident would pause nothing).
    ahead = await pqrun("pause", "reports", "--dsn", dsn)
    assert ahead.returncode == 0
    assert "no READY or RUNNING job of type reports" in ahead.stderr

    listing = await pqrun("paused", "--dsn", dsn)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].startswith("mail  since ")
    assert lines[0].endswith(": relay down")
    assert lines[1].startswith("reports  since ")
    as_json = json.loads((await pqrun("paused", "--json", "--dsn", dsn)).stdout)
    assert [(p["job_type"], p["reason"]) for p in as_json] == [
        ("mail", "relay down"),
        ("reports", None),
    ]

    status = await pqrun("status", "--dsn", dsn)
    assert status.returncode == 0, status.stderr
    by_type = status.stdout.split("active jobs by type")[1].split("paused job types")[0]
    (mail,) = [line for line in by_type.splitlines() if line.startswith("  mail ")]
    assert mail.endswith("PAUSED")
    assert "paused job types: 2 (no worker claims their jobs)" in status.stdout
    assert ": relay down" in status.stdout
    status_json = json.loads((await pqrun("status", "--json", "--dsn", dsn)).stdout)
    assert status_json["by_type"][0]["paused"] is True
    assert [p["job_type"] for p in status_json["paused"]] == ["mail", "reports"]

    # pqrun top draws the same status.
    screen = "\n".join(render(await store.queue_status(), []))
    assert "PAUSED   2 job types" in screen
    assert "relay down" in screen

    resumed = await pqrun("resume", "mail", "--dsn", dsn)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout
    not_paused = await pqrun("resume", "mail", "--dsn", dsn)
    assert not_paused.returncode == 1
    assert "is not paused" in not_paused.stderr
    refused = await pqrun("pause", "", "--dsn", dsn)
    assert refused.returncode == 1
    assert "non-empty" in refused.stderr
    assert [p["job_type"] for p in await store.paused_types()] == ["reports"]


async def test_the_paused_gauge_is_one_per_paused_type(store: PgJobStore) -> None:
    metrics = instrument(store, PrometheusMetrics(CollectorRegistry(), refresh_every=3600))
    await store.enqueue("mail")
    await store.pause("mail")
    await store.pause("reports")
    await metrics.refresh(force=True)
    found = samples((await metrics.exposition()).decode())
    assert value(found, "pqrun_job_type_paused", queue="public", job_type="mail") == 1
    assert value(found, "pqrun_job_type_paused", queue="public", job_type="reports") == 1
    await store.resume("mail")
    await metrics.refresh(force=True)
    found = samples((await metrics.exposition()).decode())
    assert ("pqrun_job_type_paused", (("job_type", "mail"), ("queue", "public"))) not in found
    assert value(found, "pqrun_job_type_paused", queue="public", job_type="reports") == 1


async def test_the_dashboard_pauses_and_resumes_a_type_with_a_reason(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    await store.enqueue("mail")
    async with client(store, allow_actions=True) as admin:
        page = await admin.get("/jobs/types/mail")
        assert page.status_code == 200
        assert 'data-action="pause"' in page.text
        token = token_in(page.text)
        url = "/jobs/types/mail/pause"
        assert (await admin.post(url, data={"reason": "x"})).status_code == 403  # no token
        cross = await admin.post(
            url, data={CSRF_FIELD: token, "reason": "x"}, headers={"origin": "http://evil"}
        )
        assert cross.status_code == 403
        assert await store.paused_types() == []

        done = await admin.post(url, data={CSRF_FIELD: token, "reason": "relay <down>"})
        assert done.status_code == 303
        assert done.headers["location"] == "/jobs/types/mail?notice=paused"
        shown = (await admin.get(done.headers["location"])).text
        assert "The job type is paused" in shown
        assert 'id="paused-state"' in shown
        assert "relay &lt;down&gt;" in shown  # escaped
        assert 'data-action="resume"' in shown
        assert [(p["job_type"], p["reason"]) for p in await store.paused_types()] == [
            ("mail", "relay <down>")
        ]
        again = await admin.post(url, data={CSRF_FIELD: token})
        assert again.headers["location"] == "/jobs/types/mail?notice=not-paused"

        # The overview's Queues table marks it, and a paused type without jobs has a row.
        await store.pause("reports/daily")
        overview = (await admin.get("/jobs/")).text
        assert overview.count('class="badge s-paused"') == 2
        assert 'title="paused: relay &lt;down&gt;"' in overview
        assert "/types/reports%2Fdaily" in overview
        # A type whose name holds "/" is paused and resumed by its own page's forms.
        daily = (await admin.get("/jobs/types/reports%2Fdaily")).text
        assert 'action="/jobs/types/reports%2Fdaily/resume"' in daily
        gone = await admin.post("/jobs/types/reports%2Fdaily/resume", data={CSRF_FIELD: token})
        assert gone.headers["location"] == "/jobs/types/reports%2Fdaily?notice=resumed"

        resumed = await admin.post("/jobs/types/mail/resume", data={CSRF_FIELD: token})
        assert resumed.headers["location"] == "/jobs/types/mail?notice=resumed"
        assert await store.paused_types() == []
        not_resumed = await admin.post("/jobs/types/mail/resume", data={CSRF_FIELD: token})
        assert not_resumed.headers["location"] == "/jobs/types/mail?notice=not-resumed"
        too_long = await admin.post(url, data={CSRF_FIELD: token, "reason": "x" * 1001})
        assert too_long.status_code == 400
        assert "at most 1,000" in too_long.text


async def test_a_read_only_dashboard_shows_a_pause_and_refuses_to_change_it(
    store: PgJobStore,
) -> None:
    await store.pause("mail", reason="relay down")
    async with client(store) as readonly:
        page = await readonly.get("/jobs/types/mail")
        assert 'id="paused-state"' in page.text
        assert "relay down" in page.text
        assert "<form" not in page.text.split('id="pause"')[1].split("</div>")[0]
        token = page.cookies.get(CSRF_COOKIE) or readonly.cookies.get(CSRF_COOKIE)
        assert token
        for action in ("pause", "resume"):
            refused = await readonly.post(f"/jobs/types/mail/{action}", data={CSRF_FIELD: token})
            assert refused.status_code == 403
            assert "allow_actions=True" in refused.text
        assert (await readonly.get("/jobs/types/other")).text.count('id="pause"') == 0
    assert [p["job_type"] for p in await store.paused_types()] == ["mail"]
