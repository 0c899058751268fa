"""Prometheus metrics: scraped over HTTP from a worker and from the ASGI app, then parsed."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pqrun import Fail, JobContext, PgJobStore, Retry, Schedule, Worker
from pqrun.metrics import PrometheusMetrics, instrument, metrics_app

from .helpers import QUICK, wait_until

DOCS = Path(__file__).parent.parent / "docs"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by (name, sorted labels)."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def ok(ctx: JobContext) -> str:
    return "ok"


async def flaky(ctx: JobContext) -> None:
    if ctx.attempt == 1:
        raise Retry(after=0)
    raise Fail("second attempt fails for good")


async def test_a_worker_serves_counters_durations_and_queue_gauges(store: PgJobStore) -> None:
    metrics = instrument(store, PrometheusMetrics(CollectorRegistry(), refresh_every=0))
    await store.enqueue_many([{"job_type": "ok"}] * 3)
    await store.enqueue("flaky")
    await store.enqueue("later", run_after=timedelta(days=1))
    worker = Worker(store, {"ok": ok, "flaky": flaky}, metrics_port=0, **QUICK)
    async with httpx.AsyncClient() as http:
        await worker.start()
        try:
            assert worker.metrics_address is not None
            host, port = worker.metrics_address
            url = f"http://{host}:{port}/metrics"

            async def all_ran() -> bool:
                found = samples((await http.get(url)).text)
                failed = {"job_type": "flaky", "outcome": "failed"}
                # The gauges are read again once older than ten times a reading took.
                return (
                    value(found, "pqrun_jobs_finished_total", **failed) == 1
                    and value(found, "pqrun_workers_alive", queue="public") == 1
                )

            await wait_until(all_ran)
            response = await http.get(url)
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            found = samples(response.text)
            assert (await http.get(f"http://{host}:{port}/other")).status_code == 404
        finally:
            await worker.stop()
    assert worker.metrics_address is None  # the server stopped with the worker
    assert value(found, "pqrun_jobs_enqueued_total", job_type="ok") == 3
    assert value(found, "pqrun_jobs_enqueued_total", job_type="flaky") == 1
    assert value(found, "pqrun_jobs_started_total", job_type="ok") == 3
    assert value(found, "pqrun_jobs_started_total", job_type="flaky") == 2
    assert value(found, "pqrun_jobs_finished_total", job_type="ok", outcome="done") == 3
    assert value(found, "pqrun_jobs_finished_total", job_type="flaky", outcome="retried") == 1
    assert value(found, "pqrun_jobs_finished_total", job_type="flaky", outcome="failed") == 1
    assert value(found, "pqrun_jobs_finished_total", job_type="flaky", outcome="done") == 0
    assert value(found, "pqrun_job_duration_seconds_count", job_type="ok") == 3
    assert value(found, "pqrun_job_duration_seconds_bucket", job_type="ok", le="+Inf") == 3
    # The job not due yet is READY, not due, and has no age; the worker was alive.
    assert value(found, "pqrun_queue_ready_jobs", queue="public", job_type="later") == 1
    assert value(found, "pqrun_queue_due_jobs", queue="public", job_type="later") == 0
    assert value(found, "pqrun_queue_oldest_due_age_seconds", queue="public", job_type="later") == 0
    assert value(found, "pqrun_workers_alive", queue="public") == 1
    assert metrics.snapshots["public"].workers_alive == 1


async def test_queue_gauges_count_the_backlog_and_its_age(store: PgJobStore, conn: Any) -> None:
    metrics = instrument(store, PrometheusMetrics(CollectorRegistry(), refresh_every=3600))
    await conn.execute(
        """
        INSERT INTO jobs (job_type, run_after)
        SELECT 'mail', now() - interval '90 seconds' FROM generate_series(1, 4);
        INSERT INTO jobs (job_type, status, locked_by, locked_at, attempts)
        VALUES ('mail', 'RUNNING', 'w', now(), 1);
        INSERT INTO jobs (job_type, status) VALUES ('mail', 'DONE');
        """
    )
    found = samples((await metrics.exposition()).decode())
    assert value(found, "pqrun_queue_ready_jobs", queue="public", job_type="mail") == 4
    assert value(found, "pqrun_queue_due_jobs", queue="public", job_type="mail") == 4
    assert value(found, "pqrun_queue_running_jobs", queue="public", job_type="mail") == 1
    age = value(found, "pqrun_queue_oldest_due_age_seconds", queue="public", job_type="mail")
    assert 90 <= age < 3600
    # Cached: a new job does not show until refresh_every has passed (or a forced refresh).
    await store.enqueue("mail")
    found = samples((await metrics.exposition()).decode())
    assert value(found, "pqrun_queue_ready_jobs", queue="public", job_type="mail") == 4
    await metrics.refresh(force=True)
    found = samples((await metrics.exposition()).decode())
    assert value(found, "pqrun_queue_ready_jobs", queue="public", job_type="mail") == 5


async def test_metrics_app_mounts_in_fastapi(store: PgJobStore) -> None:
    registry = CollectorRegistry()
    app = FastAPI()
    app.mount("/metrics", metrics_app(store, PrometheusMetrics(registry, refresh_every=0)))
    await store.enqueue("report")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        response = await http.get("/metrics/")
        refused = await http.post("/metrics/")
    assert response.status_code == 200
    found = samples(response.text)
    assert value(found, "pqrun_jobs_enqueued_total", job_type="report") == 1
    assert value(found, "pqrun_queue_ready_jobs", queue="public", job_type="report") == 1
    assert refused.status_code == 405


async def test_an_instrumented_store_keeps_its_metrics(store: PgJobStore) -> None:
    first = instrument(store, PrometheusMetrics(CollectorRegistry()))
    assert instrument(store) is first
    assert store.observers == (first,)


async def test_a_failing_observer_never_fails_the_enqueue(
    store: PgJobStore, caplog: pytest.LogCaptureFixture
) -> None:
    from pqrun.observers import JobObserver

    class Broken(JobObserver):
        def enqueued(self, job_type: str, count: int) -> None:
            raise RuntimeError("observer bug")

    store.observe(Broken())
    job_id = await store.enqueue("t")
    assert await store.get_job(job_id) is not None
    assert "observer bug" in caplog.text


async def test_the_wait_for_a_worker_is_a_histogram_by_job_type(
    store: PgJobStore, conn: Any
) -> None:
    metrics = instrument(store, PrometheusMetrics(CollectorRegistry()))
    # Due 20 s ago (the worker was away), and due now.
    await conn.execute(
        "INSERT INTO jobs (job_type, run_after, created_at) "
        "VALUES ('ok', now() - interval '20 seconds', now() - interval '25 seconds')"
    )
    await store.enqueue("ok")
    worker = Worker(store, {"ok": ok}, **QUICK)
    await worker.start()
    try:

        async def both_started() -> bool:
            found = samples(generate_latest(metrics.registry).decode())
            return value(found, "pqrun_job_wait_seconds_count", job_type="ok") == 2

        await wait_until(both_started)
    finally:
        await worker.stop()
    found = samples(generate_latest(metrics.registry).decode())
    assert value(found, "pqrun_job_wait_seconds_bucket", job_type="ok", le="10.0") == 1
    assert value(found, "pqrun_job_wait_seconds_bucket", job_type="ok", le="30.0") == 2
    assert value(found, "pqrun_job_wait_seconds_sum", job_type="ok") >= 20


async def test_a_cancelled_run_is_counted_as_cancelled(store: PgJobStore) -> None:
    metrics = instrument(store, PrometheusMetrics(CollectorRegistry()))
    started = asyncio.Event()

    async def wait(ctx: JobContext) -> None:
        started.set()
        await asyncio.Event().wait()

    job_id = await store.enqueue("wait")
    worker = Worker(store, {"wait": wait}, **QUICK)
    await worker.start()
    try:
        await asyncio.wait_for(started.wait(), 10)
        assert await store.cancel(job_id)

        async def counted() -> bool:
            found = samples(generate_latest(metrics.registry).decode())
            cancelled = {"job_type": "wait", "outcome": "cancelled"}
            return value(found, "pqrun_jobs_finished_total", **cancelled) == 1

        await wait_until(counted)
    finally:
        await worker.stop()


def test_importing_pqrun_imports_no_optional_extra() -> None:
    code = (
        "import sys, pqrun; "
        "loaded = [m for m in ('prometheus_client', 'starlette', 'uvicorn') if m in sys.modules]; "
        "print(loaded)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


async def test_the_job_type_label_is_bounded(
    store: PgJobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = CollectorRegistry()
    app = metrics_app(store, PrometheusMetrics(registry, refresh_every=0), max_job_types=5)
    types = [f"type-{n:04d}" for n in range(2000)]
    await store.enqueue_many([{"job_type": t} for t in types])
    await store.enqueue_many([{"job_type": t} for t in types[:3]])
    outer = FastAPI()
    outer.mount("/metrics", app)
    transport = httpx.ASGITransport(app=outer)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        text = (await http.get("/metrics/")).text
    found = samples(text)
    labelled = {v for _name, labels in found for k, v in labels if k == "job_type"}
    assert len(labelled) == 6, sorted(labelled)  # five by name, the rest as one
    assert "__other__" in labelled
    enqueued = {
        dict(labels)["job_type"]: v
        for (name, labels), v in found.items()
        if name == "pqrun_jobs_enqueued_total"
    }
    assert sum(enqueued.values()) == 2003
    assert enqueued["__other__"] == 1995
    assert value(found, "pqrun_queue_ready_jobs", queue="public", job_type="__other__") == 1995
    assert len(text) < 20_000

    monkeypatch.setenv("PQRUN_METRICS_MAX_JOB_TYPES", "7")
    assert PrometheusMetrics(CollectorRegistry()).max_job_types == 7
    monkeypatch.setenv("PQRUN_METRICS_MAX_JOB_TYPES", "0")
    with pytest.raises(ValueError, match="PQRUN_METRICS_MAX_JOB_TYPES"):
        PrometheusMetrics(CollectorRegistry())


async def test_busy_slots_and_buffered_jobs_are_told_apart(store: PgJobStore, conn: Any) -> None:
    metrics = instrument(store, PrometheusMetrics(CollectorRegistry()))
    release = asyncio.Event()

    async def block(ctx: JobContext) -> None:
        await release.wait()

    worker = Worker(
        store, {"ok": ok, "block": block}, concurrency=3, prefetch=2, worker_id="w-slots", **QUICK
    )
    slot_labels = {"queue": "public", "worker": "w-slots"}

    def scrape() -> dict[Any, float]:
        return samples(generate_latest(metrics.registry).decode())

    await worker.start()
    try:
        # Quick runs first: the worker measures them and prefetches two beyond its slots.
        await store.enqueue_many([{"job_type": "ok"}] * 10)

        async def quick_ones_done() -> bool:
            return value(scrape(), "pqrun_jobs_finished_total", job_type="ok", outcome="done") == 10

        await wait_until(quick_ones_done)
        await store.enqueue_many([{"job_type": "block"}] * 5)

        async def three_run_two_wait() -> bool:
            found = scrape()
            return (
                value(found, "pqrun_worker_busy_slots", job_type="block", **slot_labels) == 3
                and value(found, "pqrun_worker_buffered_jobs", job_type="block", **slot_labels) == 2
            )

        await wait_until(three_run_two_wait)
        found = scrape()
        # All five are RUNNING in the table; the gauges tell the three running apart.
        running = await conn.fetchval("SELECT count(*) FROM jobs WHERE status = 'RUNNING'")
        assert running == 5
        assert value(found, "pqrun_worker_slots", **slot_labels) == 3
        assert value(found, "pqrun_worker_busy_slots", job_type="ok", **slot_labels) == 0
        ok_labels = tuple(sorted({**slot_labels, "job_type": "ok"}.items()))
        assert ("pqrun_worker_busy_slots", ok_labels) in found  # idle types show 0, not nothing
        release.set()

        async def all_idle() -> bool:
            found = scrape()
            return (
                value(found, "pqrun_jobs_finished_total", job_type="block", outcome="done") == 5
                and value(found, "pqrun_worker_busy_slots", job_type="block", **slot_labels) == 0
                and value(found, "pqrun_worker_buffered_jobs", job_type="block", **slot_labels) == 0
            )

        await wait_until(all_idle)
    finally:
        release.set()
        await worker.stop()
    # A stopped worker has no slots to report.
    assert not any(name == "pqrun_worker_slots" for name, _labels in scrape())


async def test_schedule_ticks_are_counted_by_schedule_and_result(
    store: PgJobStore, conn: Any
) -> None:
    metrics = instrument(store, PrometheusMetrics(CollectorRegistry()))
    every = Schedule("ok", every=timedelta(seconds=1), name="every-second")
    missed = Schedule("ok", every=timedelta(hours=1), name="missed-hourly", missed="skip")
    await store.declare_schedules([every, missed])
    # Its tick came due an hour ago, while no worker ran: skipped, not enqueued.
    await conn.execute(
        "UPDATE job_schedules SET next_run_at = now() - interval '1 hour' "
        "WHERE name = 'missed-hourly'"
    )
    worker = Worker(store, {"ok": ok}, schedules=[every, missed], **QUICK)

    def ticks(schedule: str, result: str) -> float:
        found = samples(generate_latest(metrics.registry).decode())
        return value(found, "pqrun_schedule_ticks_total", schedule=schedule, result=result)

    await worker.start()
    try:

        async def fired_and_skipped() -> bool:
            return ticks("every-second", "enqueued") >= 1 and ticks("missed-hourly", "skipped") == 1

        await wait_until(fired_and_skipped)
    finally:
        await worker.stop()
    assert ticks("missed-hourly", "enqueued") == 0
    assert ticks("every-second", "failed") == 0


async def test_database_errors_are_counted_by_operation_and_kind(
    dsn: str, schemas: Callable[[], str], conn: Any
) -> None:
    schema = schemas()
    store = PgJobStore(dsn, schema=schema, statement_timeout=0.5)
    await store.setup()
    metrics = instrument(store, PrometheusMetrics(CollectorRegistry()))
    worker = Worker(store, {"ok": ok}, **QUICK)

    def errors(operation: str, kind: str) -> float:
        found = samples(generate_latest(metrics.registry).decode())
        return value(found, "pqrun_database_errors_total", operation=operation, kind=kind)

    await worker.start()
    try:
        # The jobs table locked: each claim waits out its statement timeout.
        async with conn.transaction():
            await conn.execute(f'LOCK TABLE "{schema}".jobs IN ACCESS EXCLUSIVE MODE')

            async def claim_timed_out() -> bool:
                return errors("claim", "timeout") >= 1

            await wait_until(claim_timed_out)
        # The jobs table gone: each claim is refused at once.
        await conn.execute(f'ALTER TABLE "{schema}".jobs RENAME TO jobs_away')
        try:

            async def claim_refused() -> bool:
                return errors("claim", "other") >= 1

            await wait_until(claim_refused)
        finally:
            await conn.execute(f'ALTER TABLE "{schema}".jobs_away RENAME TO jobs')
    finally:
        await worker.stop()
        await store.close()
    assert errors("claim", "connection") == 0


def test_errors_are_told_apart_by_kind() -> None:
    import asyncpg

    from pqrun._worker.loops import error_kind
    from pqrun.errors import DatabaseUnavailable

    def raised_from(cause: BaseException) -> BaseException:
        try:
            raise DatabaseUnavailable("lost the connection") from cause
        except DatabaseUnavailable as exc:
            return exc

    assert error_kind(raised_from(ConnectionResetError())) == "connection"
    assert error_kind(raised_from(TimeoutError())) == "timeout"
    assert error_kind(asyncpg.QueryCanceledError("canceling statement")) == "timeout"
    assert error_kind(asyncpg.UndefinedTableError("no jobs")) == "other"


async def test_an_observer_without_the_newer_hooks_keeps_working(store: PgJobStore) -> None:
    from pqrun.observers import JobObserver, tell_each

    class Older(JobObserver):
        def __init__(self) -> None:
            self.finished_jobs = 0

        def finished(self, job: Any, outcome: str, duration_seconds: float) -> None:
            self.finished_jobs += 1

    older = Older()
    store.observe(older)
    # An observer object that predates the hooks altogether is skipped, not an error.
    tell_each([object(), older], "database_error", "w", "claim", "other")  # type: ignore[list-item]
    await store.enqueue("ok")
    worker = Worker(store, {"ok": ok}, schedules=[Schedule("ok", every=1)], **QUICK)
    await worker.start()
    try:

        async def ran() -> bool:
            return older.finished_jobs >= 1

        await wait_until(ran)
    finally:
        await worker.stop()


def exported_names() -> set[str]:
    """Every sample name pqrun's metrics export, from the families themselves (so it
    includes families that have no sample yet)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gauge": ("",),
    }
    names: set[str] = set()
    for family in PrometheusMetrics(CollectorRegistry()).registry.collect():
        names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


def metric_names(expression: str) -> set[str]:
    return set(re.findall(r"\bpqrun_[a-z0-9_]+", expression))


def test_the_grafana_dashboard_queries_only_metrics_pqrun_exports() -> None:
    exported = exported_names()
    assert {"pqrun_worker_busy_slots", "pqrun_database_errors_total"} <= exported
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert {"queue", "job_type"} <= set(variables)
    expressions = [v["definition"] for v in variables.values() if v["type"] == "query"]
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        expressions += [target["expr"] for target in panel["targets"]]
    used = set().union(*map(metric_names, expressions))
    assert used - exported == set()
    # Every family of a worker's and the queue's is on it.
    new = {"pqrun_worker_slots", "pqrun_worker_buffered_jobs", "pqrun_schedule_ticks_total"}
    assert new | {"pqrun_job_wait_seconds_bucket", "pqrun_queue_due_jobs"} <= used


def test_the_promql_in_the_docs_uses_only_metrics_pqrun_exports() -> None:
    text = (DOCS / "observability.md").read_text()
    blocks = re.findall(r"```promql\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 2
    used = set().union(*map(metric_names, blocks))
    assert used - exported_names() == set()
    # The metrics table names every family a PrometheusMetrics has.
    for family in PrometheusMetrics(CollectorRegistry()).registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        assert f"`{name}`" in text, name
