"""OpenTelemetry: an enqueue span, a run span, and one trace from the request to the handler.

Spans are collected by the SDK's in-memory exporter. The SDK's provider is handed to
pqrun (use_tracer_provider) and to the test's own spans for the test only, not installed
globally, so other tests run without recording spans.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from pqrun import Fail, JobContext, PgJobStore, Worker, ddl_sql, tracing

from .helpers import QUICK

APP = "app"
_providers: dict[str, TracerProvider] = {}


def app_tracer() -> trace.Tracer:
    """The tracer of the application's own spans (the test's provider)."""
    return _providers[APP].get_tracer(APP)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The spans finished during the test."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _providers[APP] = provider
    tracing.use_tracer_provider(provider)
    try:
        yield exporter
    finally:
        tracing.use_tracer_provider(None)
        provider.shutdown()


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


async def report(ctx: JobContext) -> str:
    with app_tracer().start_as_current_span("render pdf"):
        await ctx.store.enqueue("notify", {"report": ctx.job.id})
    return "ok"


async def notify(ctx: JobContext) -> None:
    pass


async def test_one_trace_runs_from_the_request_through_enqueue_to_the_handler(
    store: PgJobStore, spans: InMemorySpanExporter, conn: asyncpg.Connection
) -> None:
    with app_tracer().start_as_current_span("POST /reports") as request:
        job_id = await store.enqueue("report", {"month": 10})
    stored = await conn.fetchval("SELECT trace_context FROM jobs WHERE id = $1", job_id)
    (enqueue,) = named(spans, "pqrun enqueue report")
    assert enqueue.kind is SpanKind.PRODUCER
    assert enqueue.parent is not None
    assert enqueue.parent.span_id == request.get_span_context().span_id
    assert stored.startswith(f"00-{enqueue.context.trace_id:032x}-{enqueue.context.span_id:016x}-")
    assert enqueue.attributes is not None
    assert enqueue.attributes["messaging.message.id"] == str(job_id)

    await Worker(store, {"report": report, "notify": notify}, **QUICK).drain()

    trace_id = request.get_span_context().trace_id
    (run,) = named(spans, "pqrun run report")
    assert run.kind is SpanKind.CONSUMER
    assert run.context.trace_id == trace_id
    assert run.parent is not None
    assert run.parent.span_id == enqueue.context.span_id
    assert run.attributes is not None
    assert run.attributes["messaging.message.id"] == str(job_id)
    assert run.attributes["pqrun.job.attempt"] == 1
    assert run.attributes["pqrun.job.outcome"] == "done"
    assert run.status.status_code is StatusCode.UNSET
    # The handler's own span is the run's child, and the job it enqueued runs in the
    # same trace too.
    (render,) = named(spans, "render pdf")
    assert render.parent is not None
    assert render.parent.span_id == run.context.span_id
    (follow_up,) = named(spans, "pqrun run notify")
    assert follow_up.context.trace_id == trace_id


async def test_a_failed_run_marks_its_span_as_an_error(
    store: PgJobStore, spans: InMemorySpanExporter
) -> None:
    async def broken(ctx: JobContext) -> None:
        raise Fail("no such customer")

    await store.enqueue("broken")
    await Worker(store, {"broken": broken}, **QUICK).drain()
    (run,) = named(spans, "pqrun run broken")
    assert run.status.status_code is StatusCode.ERROR
    assert run.status.description == "Fail: no such customer"
    assert run.attributes is not None
    assert run.attributes["pqrun.job.outcome"] == "failed"


async def test_enqueue_many_links_every_job_to_one_span(
    store: PgJobStore, spans: InMemorySpanExporter, conn: asyncpg.Connection
) -> None:
    await store.enqueue_many([{"job_type": "a"}, {"job_type": "a"}])
    (span,) = named(spans, "pqrun enqueue a")
    assert span.attributes is not None
    assert span.attributes["messaging.batch.message_count"] == 2
    contexts = await conn.fetch("SELECT DISTINCT trace_context FROM jobs")
    assert len(contexts) == 1
    assert contexts[0]["trace_context"].startswith(
        f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-"
    )


async def test_without_a_tracer_provider_no_span_is_made_and_nothing_stored(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    assert not tracing.recording()  # opentelemetry-api alone: the global provider is a proxy
    await store.enqueue("plain")
    assert await conn.fetchval("SELECT trace_context FROM jobs") is None


async def test_without_opentelemetry_nothing_is_stored(
    store: PgJobStore, monkeypatch: pytest.MonkeyPatch, conn: asyncpg.Connection
) -> None:
    monkeypatch.setattr(tracing, "AVAILABLE", False)
    await store.enqueue("plain")
    await store.enqueue_many([{"job_type": "plain"}])
    assert await conn.fetchval("SELECT count(*) FROM jobs WHERE trace_context IS NULL") == 2
    ran: list[Any] = []

    async def plain(ctx: JobContext) -> None:
        ran.append(ctx.job.trace_context)

    await Worker(store, {"plain": plain}, **QUICK).drain()
    assert ran == [None, None]


async def test_an_existing_table_gains_the_trace_context_column(
    conn: asyncpg.Connection,
) -> None:
    await conn.execute("DROP SCHEMA IF EXISTS old_install CASCADE; CREATE SCHEMA old_install")
    try:
        await conn.execute("SET search_path = old_install")
        await conn.execute(ddl_sql())
        await conn.execute("ALTER TABLE jobs DROP COLUMN trace_context")  # as before it
        await conn.execute(ddl_sql())
        assert await conn.fetchval(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = "
            "'old_install' AND table_name = 'jobs' AND column_name = 'trace_context'"
        )
    finally:
        await conn.execute("RESET search_path; DROP SCHEMA old_install CASCADE")
