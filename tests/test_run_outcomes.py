"""One run, one outcome: the trace, the metrics, the observers and the log agree.

What a run came to is known once its write committed, or was found moot: a handler that
answers after its job was taken back did its work, but the database ignored the answer.
Its span, its metric and its log line all say "ignored" (not "done").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any, cast

import asyncpg
import pytest
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry

from pqrun import JobContext, PgJobStore, Worker, tracing
from pqrun._worker.outcome import RunOutcome
from pqrun.metrics import PrometheusMetrics, instrument
from pqrun.models import Job
from pqrun.observers import OUTCOMES, JobObserver

from .helpers import QUICK, status_of, wait_until


class Finished(JobObserver):
    def __init__(self) -> None:
        self.outcomes: list[tuple[int, str]] = []

    def finished(self, job: Job, outcome: str, duration_seconds: float) -> None:
        self.outcomes.append((job.id, outcome))


def test_the_observed_outcomes_are_the_documented_ones() -> None:
    assert tuple(kind.value for kind in RunOutcome if kind.observed) == OUTCOMES


async def test_a_late_answer_is_ignored_in_the_trace_the_metrics_and_the_log(
    store: PgJobStore,
    spans: InMemorySpanExporter,
    conn: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pqrun")
    metrics = instrument(store, PrometheusMetrics(CollectorRegistry(), refresh_every=0))
    observer = Finished()
    store.observe(observer)
    started = threading.Event()
    answer = threading.Event()

    def late(ctx: JobContext) -> str:
        # A plain function runs in a thread, which cannot be stopped: it answers even
        # after its job was taken back.
        started.set()
        answer.wait(60)
        return "done after all"

    job_id = await store.enqueue("late")
    worker = Worker(store, {"late": late}, **QUICK)
    drained = asyncio.ensure_future(worker.drain())
    try:
        await asyncio.wait_for(asyncio.to_thread(started.wait, 60), 60)
        # Taken back behind the worker's back (as the reaper would), and picked again.
        await conn.execute(
            "UPDATE jobs SET lease_id = lease_id + 1 WHERE id = $1 AND status = 'RUNNING'",
            job_id,
        )
    finally:
        answer.set()
    assert await asyncio.wait_for(drained, 60) == 0  # nothing recorded
    assert await status_of(store, job_id) == "RUNNING"  # the other claim's to finish

    await wait_until(lambda: _finished_span(spans), within=30)
    (run,) = [s for s in spans.get_finished_spans() if s.name == "pqrun run late"]
    assert run.attributes is not None
    assert run.attributes["pqrun.job.outcome"] == "ignored"
    assert run.status.status_code is StatusCode.ERROR
    assert observer.outcomes == [(job_id, "ignored")]
    labels = {"job_type": "late", "outcome": "ignored"}
    assert metrics.registry.get_sample_value("pqrun_jobs_finished_total", labels) == 1
    done = {"job_type": "late", "outcome": "done"}
    assert not metrics.registry.get_sample_value("pqrun_jobs_finished_total", done)
    (line,) = [r for r in caplog.records if "no longer owns the job" in r.getMessage()]
    assert vars(line)["outcome"] == "ignored"


async def _finished_span(spans: InMemorySpanExporter) -> bool:
    return any(s.name == "pqrun run late" for s in spans.get_finished_spans())


class BreaksOnStart(SpanProcessor):
    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if span.name.startswith("pqrun run"):
            raise RuntimeError("a span processor broke in on_start")


class BreaksOnEnd(SpanProcessor):
    def on_end(self, span: Any) -> None:
        if span.name.startswith("pqrun run"):
            raise RuntimeError("a span processor broke in on_end")


@pytest.fixture
def broken_tracer(request: pytest.FixtureRequest) -> Iterator[None]:
    provider = TracerProvider()
    provider.add_span_processor(request.param())
    tracing.use_tracer_provider(provider)
    try:
        yield
    finally:
        tracing.use_tracer_provider(None)


async def fine(ctx: JobContext) -> str:
    return "fine"


@pytest.mark.parametrize("broken_tracer", [BreaksOnStart], indirect=True)
@pytest.mark.usefixtures("broken_tracer")
async def test_a_tracer_that_fails_to_start_a_span_fails_that_attempt_not_the_worker(
    store: PgJobStore, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = await store.enqueue("t", max_attempts=1)
    worker = Worker(store, {"t": fine}, **QUICK)
    await worker.start()
    try:
        await wait_until(lambda: _status_is(store, job_id, "FAILED"), within=60)
        assert worker.is_running
        job = await store.get_job(job_id)
        assert job is not None
        assert job.last_error is not None
        assert "the worker failed around the handler" in job.last_error
    finally:
        await worker.stop()
    assert not [r for r in caplog.records if "stopping the worker" in r.getMessage()]


@pytest.mark.parametrize("broken_tracer", [BreaksOnEnd], indirect=True)
@pytest.mark.usefixtures("broken_tracer")
async def test_a_tracer_that_fails_to_end_a_span_is_not_a_database_error(
    store: PgJobStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pqrun")
    observer = Finished()
    store.observe(observer)
    job_id = await store.enqueue("t")
    assert await Worker(store, {"t": fine}, **QUICK).drain() == 1
    assert await status_of(store, job_id) == "DONE"
    assert observer.outcomes == [(job_id, "done")]
    messages = [r.getMessage() for r in caplog.records]
    assert any("ending the trace span" in m for m in messages)
    assert not [m for m in messages if "database" in m or "works again" in m]


async def test_a_handler_answering_after_shutdown_still_ends_its_span(
    store: PgJobStore, spans: InMemorySpanExporter
) -> None:
    started = asyncio.Event()
    answer_now = asyncio.Event()
    answered = asyncio.Event()

    async def stubborn(ctx: JobContext) -> str:
        started.set()
        while not answer_now.is_set():  # ignores every cancellation until told
            with contextlib.suppress(asyncio.CancelledError):
                await answer_now.wait()
        answered.set()
        return "late"

    worker = Worker(store, {"t": stubborn}, shutdown_grace=0.2, shutdown_timeout=1, **QUICK)
    job_id = await store.enqueue("t")
    await worker.start()
    await asyncio.wait_for(started.wait(), 60)
    await worker.stop()
    assert not answered.is_set()
    # The shutdown is over; now the handler answers: nothing is written, the span ends.
    answer_now.set()
    await asyncio.wait_for(answered.wait(), 60)
    await wait_until(lambda: _span_named(spans, "pqrun run t"), within=30)
    assert await status_of(store, job_id) == "RUNNING"  # the reaper's to take back


async def _status_is(store: PgJobStore, job_id: int, status: str) -> bool:
    return await status_of(store, job_id) == status


async def _span_named(spans: InMemorySpanExporter, name: str) -> bool:
    return any(s.name == name for s in spans.get_finished_spans())


async def test_an_answer_after_shutdown_is_written_by_the_next_run_of_the_worker(
    store: PgJobStore,
) -> None:
    """A handler that went on past its shutdown answers once the worker runs again:
    the answer is written (as before the split), not dropped with the old run."""
    started = asyncio.Event()
    answer_now = asyncio.Event()

    async def stubborn(ctx: JobContext) -> str:
        started.set()
        while not answer_now.is_set():  # ignores every cancellation until told
            with contextlib.suppress(asyncio.CancelledError):
                await answer_now.wait()
        return "finished late"

    worker = Worker(store, {"t": stubborn}, shutdown_grace=0.2, shutdown_timeout=1, **QUICK)
    job_id = await store.enqueue("t")
    await worker.start()
    await asyncio.wait_for(started.wait(), 60)
    await worker.stop()
    await worker.start()  # the same worker, again
    try:
        answer_now.set()
        await wait_until(lambda: _status_is(store, job_id, "DONE"), within=60)
        job = await store.get_job(job_id)
        assert job is not None
        assert job.result == "finished late"
        assert worker.is_running
    finally:
        await worker.stop()


async def test_a_task_of_an_earlier_run_ending_does_not_stop_the_worker_running_now(
    store: PgJobStore, caplog: pytest.LogCaptureFixture
) -> None:
    started = asyncio.Event()
    end_now = asyncio.Event()
    old_slots: list[asyncio.Task[Any]] = []

    async def stubborn(ctx: JobContext) -> None:
        started.set()
        old_slots.append(cast(asyncio.Task[Any], asyncio.current_task()))
        while not end_now.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await end_now.wait()
        raise asyncio.CancelledError  # ends its slot task as cancelled, late

    worker = Worker(store, {"t": stubborn}, shutdown_grace=0.2, shutdown_timeout=1, **QUICK)
    await store.enqueue("t")
    await worker.start()
    await asyncio.wait_for(started.wait(), 60)
    await worker.stop()
    await worker.start()
    try:
        end_now.set()
        await wait_until(lambda: _done(old_slots[0]), within=60)  # the old slot ends
        await asyncio.sleep(0)  # and its done-callbacks run
        other = await store.enqueue("t2")
        assert worker.is_running
        assert not [r for r in caplog.records if "stopping the worker" in r.getMessage()]
        assert await status_of(store, other) in ("READY", "FAILED")  # no handler: not run
    finally:
        await worker.stop()


def test_worker_settings_cannot_be_changed_silently_after_it_is_built(store: PgJobStore) -> None:
    worker = Worker(store, {"t": fine}, concurrency=2)
    with pytest.raises(AttributeError, match="concurrency="):
        worker.concurrency = 4
    assert worker.concurrency == 2
    worker.enabled = False  # read where it is used: still settable
    assert not worker.enabled


async def _done(task: asyncio.Task[Any]) -> bool:
    return task.done()
