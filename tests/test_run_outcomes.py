"""One run, one outcome: the trace, the metrics, the observers and the log agree.

What a run came to is known once its write committed, or was found moot: a handler that
answers after its job was taken back did its work, but the database ignored the answer.
Its span, its metric and its log line all say "ignored" (not "done").
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator

import asyncpg
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry

from pqrun import JobContext, PgJobStore, Worker, tracing
from pqrun._worker.outcome import RunOutcome
from pqrun.metrics import PrometheusMetrics, instrument
from pqrun.models import Job
from pqrun.observers import OUTCOMES, JobObserver

from .helpers import QUICK, status_of, wait_until


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_tracer_provider(provider)
    try:
        yield exporter
    finally:
        tracing.use_tracer_provider(None)
        provider.shutdown()


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
