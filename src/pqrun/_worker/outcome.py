"""What one run came to, in one vocabulary, and everything said about it.

A run's ``Outcome`` is what its handler answered (a result, an error, a snooze), handed
to the outcome writer. What the run *came to* (a ``RunOutcome``) is known only once that
write has committed, or was found moot: a late answer to a job that was taken back in
the meantime is "ignored", however well the handler did. So ``RunOutcome`` is decided
once, at that moment (``RunOutcome.of``), and every report of the run is derived from
it (``report``): the log line and its ``outcome`` field, the observers' ``finished``
call (metrics), and the run's trace span. The strings are those documented in
docs/observability.md.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pqrun import tracing
from pqrun.models import Job, JobStatus
from pqrun.observers import tell

if TYPE_CHECKING:
    from pqrun.observers import JobObserver

logger = logging.getLogger("pqrun")


@dataclass(slots=True)
class Outcome:
    """What one run answered, before it is written."""

    job: Job
    duration_ms: int
    result_json: str | None = None  # set when the handler returned
    error: str = ""
    retry_after: timedelta | None = None
    terminal: bool = False
    snooze_after: timedelta | None = None  # set when the handler raised Snooze
    # Set once its write committed, so that retrying a partly written batch is safe.
    written: bool = False
    # Set when not even a plain failure could be recorded: why (the job stays RUNNING
    # until the reaper takes it back).
    abandoned: str | None = None
    # Put aside until this time (monotonic): its row was locked by someone else.
    not_before: float = 0.0
    tries_aside: int = 0
    # The run's trace span (None: not traced); ended once the run's fate is known.
    span: Any = None


class RunOutcome(enum.Enum):
    """What a run came to. The values are the observers' (``observers.OUTCOMES``) and
    the metrics' ``outcome`` label, plus ``released``, which observers never hear of."""

    DONE = "done"
    RETRIED = "retried"  # back to READY after an error, attempts left
    FAILED = "failed"
    SNOOZED = "snoozed"
    CANCELLED = "cancelled"  # stopped by store.cancel() (or taken back) while running
    IGNORED = "ignored"  # the run no longer owned the job: its answer was not recorded
    RELEASED = "released"  # shutdown put the job back to READY: its answer was dropped

    @classmethod
    def of(cls, outcome: Outcome, status: JobStatus | None) -> RunOutcome:
        """What a written outcome came to, from the status its write left the job in."""
        if status is None:
            return cls.IGNORED
        if status is JobStatus.DONE:
            return cls.DONE
        if status is JobStatus.FAILED:
            return cls.FAILED
        if outcome.snooze_after is not None:
            return cls.SNOOZED
        return cls.RETRIED

    @property
    def log_field(self) -> str:
        """The ``outcome`` field of the log line: the status the job was left in."""
        return _LOG_FIELDS[self]

    @property
    def span_outcome(self) -> str:
        """The ``pqrun.job.outcome`` attribute of the run's span."""
        return "error" if self is RunOutcome.RETRIED else self.value

    @property
    def observed(self) -> bool:
        """Whether observers (and so metrics) hear of it."""
        return self is not RunOutcome.RELEASED


_LOG_FIELDS = {
    RunOutcome.DONE: "DONE",
    RunOutcome.RETRIED: "READY",
    RunOutcome.SNOOZED: "READY",
    RunOutcome.FAILED: "FAILED",
    RunOutcome.CANCELLED: "cancelled",
    RunOutcome.IGNORED: "ignored",
    RunOutcome.RELEASED: "released",
}


def log_extra(job: Job, kind: RunOutcome, duration_ms: int) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "job_type": job.job_type,
        "attempt": job.attempts,
        "duration_ms": duration_ms,
        "outcome": kind.log_field,
    }


def end_span(span: Any, kind: RunOutcome | None, why: str) -> None:
    """End a run's span with what the run came to (None: nothing recorded, ``why``)."""
    if span is None:
        return
    # Called where a failure would be mistaken for the write's (or the slot's): a
    # tracer's fault is logged and goes no further.
    try:
        if kind is None:
            tracing.record_outcome(span, None, why or "its outcome was not recorded")
        elif kind is RunOutcome.DONE or kind is RunOutcome.SNOOZED:
            tracing.record_outcome(span, kind.span_outcome, "")
        else:
            tracing.record_outcome(span, kind.span_outcome, why or kind.value)
        span.end()
    except Exception:
        logger.exception("pqrun: ending the trace span of a run failed")


def tell_observers(
    observers: Sequence[JobObserver], job: Job, kind: RunOutcome, seconds: float
) -> None:
    if kind.observed:
        for observer in observers:
            tell(observer.finished, job, kind.value, seconds)


def report(
    observers: Sequence[JobObserver],
    worker_id: str,
    outcome: Outcome,
    kind: RunOutcome,
) -> None:
    """Say what a run came to, once its write committed (or was found moot)."""
    job = outcome.job
    if kind is RunOutcome.DONE:
        # Thousands a second: build nothing that nobody reads.
        if outcome.span is not None:
            end_span(outcome.span, kind, "")
        if observers:
            tell_observers(observers, job, kind, outcome.duration_ms / 1000)
        if logger.isEnabledFor(logging.DEBUG):
            extra = log_extra(job, kind, outcome.duration_ms)
            logger.debug(
                "job %s (%s) done in %d ms", job.id, job.job_type, outcome.duration_ms, extra=extra
            )
        return
    headline = outcome.error.split("\n", 1)[0]
    if kind is RunOutcome.IGNORED:
        end_span(outcome.span, kind, outcome.abandoned or "the run no longer owned the job")
    else:
        end_span(outcome.span, kind, headline)
    tell_observers(observers, job, kind, outcome.duration_ms / 1000)
    extra = log_extra(job, kind, outcome.duration_ms)
    if kind is RunOutcome.IGNORED and outcome.abandoned is not None:
        logger.error(
            "job %s (%s): attempt %s by %s could not be recorded (%s); it stays RUNNING "
            "until the reaper takes it back. The run came to: %s",
            job.id,
            job.job_type,
            job.attempts,
            worker_id,
            outcome.abandoned,
            headline or "a result",
            extra=extra,
        )
    elif kind is RunOutcome.IGNORED:
        logger.warning(
            "job %s (%s): attempt %s by %s no longer owns the job (it was reaped, "
            "cancelled or picked again); its outcome was not recorded",
            job.id,
            job.job_type,
            job.attempts,
            worker_id,
            extra=extra,
        )
    elif kind is RunOutcome.SNOOZED:
        logger.info(
            "job %s (%s) snoozed for %s", job.id, job.job_type, outcome.snooze_after, extra=extra
        )
    elif kind is RunOutcome.RETRIED:
        logger.warning(
            "job %s (%s) attempt %s/%s failed, retrying in %s: %s",
            job.id,
            job.job_type,
            job.attempts,
            job.max_attempts,
            outcome.retry_after,
            headline,
            extra=extra,
        )
    else:
        logger.error(
            "job %s (%s) FAILED after attempt %s/%s: %s",
            job.id,
            job.job_type,
            job.attempts,
            job.max_attempts,
            headline,
            extra=extra,
        )


def report_cancelled(
    observers: Sequence[JobObserver], job: Job, span: Any, elapsed: float, duration_ms: int
) -> None:
    """A run stopped because its job was cancelled (or taken back): nothing to write."""
    logger.info(
        "job %s (%s) was cancelled while running; its handler was stopped",
        job.id,
        job.job_type,
        extra=log_extra(job, RunOutcome.CANCELLED, duration_ms),
    )
    tell_observers(observers, job, RunOutcome.CANCELLED, elapsed)
    end_span(span, RunOutcome.CANCELLED, "cancelled while running")


def report_released(job: Job, span: Any) -> None:
    """A run ended after shutdown had put its job back to READY: its answer is dropped."""
    logger.warning(
        "job %s finished after shutdown had put it back to READY; outcome dropped",
        job.id,
        extra={"job_id": job.id},
    )
    end_span(span, RunOutcome.RELEASED, "put back to READY by shutdown; outcome dropped")
