"""OpenTelemetry spans for enqueue and for each run, linked through the job row.

Used only when ``opentelemetry-api`` is installed (``pip install 'pqrun[tracing]'``)
and a tracer provider is configured (the SDK's, or one given to ``use_tracer_provider``);
otherwise no span is made and nothing is stored.

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

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import trace as _trace
    from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider
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


_own_provider: Any = None
_cached: tuple[Any, Any] = (None, None)  # (provider, its tracer)
# The provider is looked up at most once a second: the lookup reads os.environ while no
# provider is set, which would cost more than the rest of a no-op job's bookkeeping.
PROVIDER_RECHECK_SECONDS = 1.0
_recheck_at = 0.0
_current: Any = None  # the tracer to use until _recheck_at (None: none)


def use_tracer_provider(provider: Any) -> None:
    """Make pqrun's spans with ``provider`` rather than the global one (None: the global)."""
    global _own_provider, _recheck_at
    _own_provider = provider
    _recheck_at = 0.0


def recording() -> bool:
    """True when spans would go somewhere: a tracer provider (an SDK) is configured.

    With opentelemetry-api alone no span is recorded, so pqrun makes none: a no-op span
    per job would cost more than the rest of a no-op job's run.
    """
    return _tracer() is not None


def _tracer() -> Any:
    global _recheck_at, _current
    now = time.monotonic()
    if now < _recheck_at:
        return _current
    _current = _lookup_tracer()
    _recheck_at = now + PROVIDER_RECHECK_SECONDS
    return _current


def _lookup_tracer() -> Any:
    global _cached
    if _trace is None:
        return None
    provider = _own_provider or _trace.get_tracer_provider()
    if isinstance(provider, ProxyTracerProvider | NoOpTracerProvider):
        return None
    if _cached[0] is not provider:
        from . import __version__

        _cached = (provider, provider.get_tracer(TRACER_NAME, __version__))
    return _cached[1]


@contextmanager
def enqueue_span(job_type: str, count: int = 1) -> Iterator[str | None]:
    """A span around an enqueue; yields the traceparent to store (None: nothing to store)."""
    tracer = _tracer()
    if tracer is None:
        yield None
        return
    assert _trace is not None
    name = f"pqrun enqueue {job_type}"
    with tracer.start_as_current_span(
        name,
        kind=_trace.SpanKind.PRODUCER,
        attributes={
            "messaging.system": "pqrun",
            "messaging.operation.type": "send",
            "messaging.destination.name": job_type,
            "messaging.batch.message_count": count,
        },
    ) as span:
        if not span.get_span_context().is_valid:
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


def start_run_span(job: Job) -> Any:
    """Start the span of one run of ``job`` (None without a tracer provider).

    The span is made current around the handler with ``current_span``, and ended by the
    worker once the run's outcome is written (or found moot), so that its
    ``pqrun.job.outcome`` is what the run came to, as the metrics say it.
    """
    tracer = _tracer()
    if tracer is None:
        return None
    assert _trace is not None
    parent = None
    if job.trace_context:
        parent = _propagator.extract({"traceparent": job.trace_context})
    return tracer.start_span(
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
    )


@contextmanager
def current_span(span: Any) -> Iterator[None]:
    """Make ``span`` the current span (the parent of the handler's own) without ending it."""
    if span is None or _trace is None:
        yield
        return
    with _trace.use_span(
        span, end_on_exit=False, record_exception=False, set_status_on_exception=False
    ):
        yield


def record_outcome(span: Any, outcome: str | None, error: str) -> None:
    """Mark the run's span with what the run came to (error status unless it succeeded).

    ``outcome`` None: the run's outcome is not known (it could not be recorded).
    """
    if span is None or _trace is None or not span.is_recording():
        return
    if outcome is not None:
        span.set_attribute("pqrun.job.outcome", outcome)
    if error:
        span.set_status(_trace.Status(_trace.StatusCode.ERROR, error.split("\n", 1)[0][:500]))
