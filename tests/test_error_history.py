"""Every failed attempt keeps its error: the worker's and the reaper's, the last 20, on the
job page and in `pqrun jobs show`; a job that ends DONE keeps no stale last_error."""

from __future__ import annotations

import json
from datetime import timedelta

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

import pqrun
from pqrun import JobContext, JobStatus, PgJobStore, Retry

from .helpers import picked
from .test_cli_commands import pqrun as pqrun_cli
from .test_worker import make_worker


async def test_each_failed_attempt_keeps_its_error_and_done_clears_the_last(
    store: PgJobStore,
) -> None:
    async def flaky(ctx: JobContext) -> str:
        if ctx.attempt < 3:
            raise Retry(timedelta(0), f"boom {ctx.attempt}")
        return "fine"

    job_id = await store.enqueue("flaky", max_attempts=5)
    worker = make_worker(store, {"flaky": flaky}, worker_id="w-history")
    await worker.drain()
    job = await store.get_job(job_id)
    assert job is not None
    assert (job.status, job.attempts, job.last_error) == (JobStatus.DONE, 3, None)
    history = await store.error_history(job_id)
    assert [(e.attempt, e.worker, e.outcome) for e in history] == [
        (1, "w-history", "retried"),
        (2, "w-history", "retried"),
    ]
    assert "boom 1" in history[0].error
    assert "boom 2" in history[1].error
    assert history[0].at <= history[1].at <= (job.finished_at or history[1].at)
    assert history[0].at.utcoffset() == timedelta(0)


async def test_the_reaper_adds_its_own_entries(store: PgJobStore, other: PgJobStore) -> None:
    job_id = await store.enqueue("t", max_attempts=2)
    await picked(store, "crashing-worker")
    assert await other.reap_stale(timedelta(0)) == [(job_id, JobStatus.READY)]
    await picked(store, "crashing-worker")
    assert await other.reap_stale(timedelta(0)) == [(job_id, JobStatus.FAILED)]
    history = await store.error_history(job_id)
    assert [(e.attempt, e.worker, e.outcome) for e in history] == [
        (1, "crashing-worker", "reaped"),
        (2, "crashing-worker", "abandoned"),
    ]
    assert history[0].error.startswith("reaped: attempt 1 of 2 (worker crashing-worker,")
    assert history[0].error.endswith("; put back to READY")
    job = await store.get_job(job_id)
    assert job is not None
    assert job.last_error == history[1].error
    assert job.last_error.startswith("abandoned: attempt 2 of 2")
    assert job.last_error.endswith(", and no attempts are left")


async def test_the_history_keeps_the_last_20_attempts_each_cut_to_2000_characters(
    store: PgJobStore,
) -> None:
    async def always(ctx: JobContext) -> None:
        raise Retry(timedelta(0), f"attempt {ctx.attempt} " + "x" * 5000)

    job_id = await store.enqueue("always", max_attempts=25)
    await make_worker(store, {"always": always}).drain()
    history = await store.error_history(job_id)
    assert [e.attempt for e in history] == list(range(6, 26))
    assert [e.outcome for e in history] == ["retried"] * 19 + ["failed"]
    assert all(len(e.error) == 2000 for e in history)
    assert "attempt 25 " in history[-1].error


async def test_no_history_for_a_job_that_never_failed_or_does_not_exist(
    store: PgJobStore,
) -> None:
    job_id = await store.enqueue("t")
    assert await store.error_history(job_id) == []
    assert await store.error_history(job_id + 1000) == []


async def test_the_job_page_and_jobs_show_list_the_attempts(store: PgJobStore, dsn: str) -> None:
    async def flaky(ctx: JobContext) -> None:
        raise Retry(timedelta(0), f"<b>boom {ctx.attempt}</b>")

    job_id = await store.enqueue("flaky", max_attempts=2)
    await make_worker(store, {"flaky": flaky}, worker_id="w-page").drain()

    app = FastAPI()
    app.mount("/jobs", pqrun.dashboard(store))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        page = (await http.get(f"/jobs/jobs/{job_id}")).text
    assert "Errors by attempt" in page
    attempts = page[page.index('id="attempts"') :]
    # Newest first, escaped.
    assert attempts.index("&lt;b&gt;boom 2") < attempts.index("&lt;b&gt;boom 1")
    assert "<b>boom" not in page
    assert tuple(w for w in ("w-page", "retried", "failed") if w in attempts) == (
        "w-page",
        "retried",
        "failed",
    )

    shown = await pqrun_cli("jobs", "show", str(job_id), "--dsn", dsn)
    assert shown.returncode == 0, shown.stderr
    assert "errors by attempt:" in shown.stdout
    assert "attempt 1," in shown.stdout
    assert "w-page: retried" in shown.stdout
    as_json = await pqrun_cli("jobs", "show", str(job_id), "--json", "--dsn", dsn)
    entries = json.loads(as_json.stdout)["error_history"]
    assert [(e["attempt"], e["outcome"]) for e in entries] == [(1, "retried"), (2, "failed")]


@pytest.mark.parametrize("odd", ["{}", '"x"', "null", "5", "[1, 2, 3]"])
async def test_a_history_changed_by_hand_never_keeps_an_outcome_or_the_reaper_out(
    store: PgJobStore, other: PgJobStore, conn: asyncpg.Connection, odd: str
) -> None:
    async def broken(ctx: JobContext) -> None:
        raise ValueError("still broken")

    failing = await store.enqueue("broken", max_attempts=1)
    stranded = await store.enqueue("stranded", max_attempts=1)
    await conn.execute("UPDATE jobs SET error_history = $1::jsonb", odd)
    await make_worker(store, {"broken": broken}).drain()
    job = await store.get_job(failing)
    assert job is not None
    assert job.status is JobStatus.FAILED  # the outcome was written
    history = await store.error_history(failing)
    assert history[-1].error.startswith("ValueError: still broken")
    assert [e.outcome for e in history] == ["failed"]  # what was no entry is left out

    await picked(store, "crashing-worker", ["stranded"])
    assert await other.reap_stale(timedelta(0)) == [(stranded, JobStatus.FAILED)]
    assert [e.outcome for e in await store.error_history(stranded)] == ["abandoned"]


async def test_a_history_longer_than_20_is_cut_to_the_last_20(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    async def broken(ctx: JobContext) -> None:
        raise ValueError("once more")

    job_id = await store.enqueue("broken", max_attempts=1)
    await conn.execute(
        "UPDATE jobs SET error_history = (SELECT jsonb_agg(jsonb_build_object("
        "'attempt', g, 'at', now(), 'worker', 'w', 'outcome', 'retried', 'error', 'old'))"
        " FROM generate_series(1, 30) AS g)"
    )
    await make_worker(store, {"broken": broken}).drain()
    history = await store.error_history(job_id)
    assert len(history) == 20
    assert [e.attempt for e in history[:19]] == list(range(12, 31))
    assert history[-1].error.startswith("ValueError: once more")
