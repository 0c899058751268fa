"""OpenTelemetry spans for enqueue and for each run, linked through the job row.

Used only when ``opentelemetry-api`` is installed (``pip install 'pqrun[tracing]'``);
without it every function here returns at once and nothing is stored.

- ``enqueue`` runs in a span ``pqrun enqueue <job_type>`` (kind PRODUCER, a child of
  whatever span is current, say the HTTP request's) and stores that span's context with
  the job as a W3C ``traceparent`` (the ``trace_context`` column).
- Each run of the handler is a span ``pqrun run <job_type>`` (kind CONSUMER) whose parent
  is that stored context, so one trace goes from the request that enqueued to the
  handler that ran (and on to the jobs the handler enqueues). Spans the handler starts
  are children of the run's span.

Only the context is stored, never baggage or payload data.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import trace as _trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # tracing is an optional extra
    _trace = None  # type: ignore[assignment]
    TraceContextTextMapPropagator = None  # type: ignore[assignment,misc]

if TYPE_CHECKING:
    from .models import Job

#: True when opentelemetry-api is importable: spans are made and contexts stored.
AVAILABLE = _trace is not None

TRACER_NAME = "pqrun"
_propagator: Any = TraceContextTextMapPropagator() if AVAILABLE else None


_cached_tracer: Any = None


def _tracer() -> Any:
    # A proxy until the application sets its tracer provider, then that provider's.
    global _cached_tracer
    if _cached_tracer is None:
        assert _trace is not None
        from . import __version__

        _cached_tracer = _trace.get_tracer(TRACER_NAME, __version__)
    return _cached_tracer


@contextmanager
def enqueue_span(job_type: str, count: int = 1) -> Iterator[str | None]:
    """A span around an enqueue; yields the traceparent to store (None: nothing to store)."""
    if _trace is None:
        yield None
        return
    name = f"pqrun enqueue {job_type}"
    with _tracer().start_as_current_span(
        name,
        kind=_trace.SpanKind.PRODUCER,
        attributes={
            "messaging.system": "pqrun",
            "messaging.operation.type": "send",
            "messaging.destination.name": job_type,
            "messaging.batch.message_count": count,
        },
    ) as span:
        if not span.get_span_context().is_valid:  # no SDK configured: nothing to link
            yield None
            return
        carrier: dict[str, str] = {}
        _propagator.inject(carrier)
        yield carrier.get("traceparent")


def set_enqueued_id(job_id: int) -> None:
    """Note the id of the job the current enqueue span made."""
    if _trace is None:
        return
    span = _trace.get_current_span()
    if span.is_recording():
        span.set_attribute("messaging.message.id", str(job_id))


@contextmanager
def run_span(job: Job) -> Iterator[Any]:
    """The span of one run of ``job``, current while the handler runs.

    Yields the span (or None without opentelemetry); ``record_outcome`` finishes it.
    """
    if _trace is None:
        yield None
        return
    parent = None
    if job.trace_context:
        parent = _propagator.extract({"traceparent": job.trace_context})
    with _tracer().start_as_current_span(
        f"pqrun run {job.job_type}",
        context=parent,
        kind=_trace.SpanKind.CONSUMER,
        attributes={
            "messaging.system": "pqrun",
            "messaging.operation.type": "process",
            "messaging.destination.name": job.job_type,
            "messaging.message.id": str(job.id),
            "pqrun.job.attempt": job.attempts,
            "pqrun.job.max_attempts": job.max_attempts,
        },
        record_exception=False,  # the outcome says what happened, not a raw exception
        set_status_on_exception=False,
    ) as span:
        yield span


def record_outcome(span: Any, outcome: str, error: str) -> None:
    """Mark the run's span with what the run came to (error status unless it succeeded)."""
    if span is None or _trace is None or not span.is_recording():
        return
    span.set_attribute("pqrun.job.outcome", outcome)
    if error:
        span.set_status(_trace.Status(_trace.StatusCode.ERROR, error.split("\n", 1)[0][:500]))
