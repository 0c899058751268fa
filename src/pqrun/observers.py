"""What happens to jobs, told to whoever listens: the hook behind metrics.

A ``JobObserver`` is attached to a store (``store.observe(observer)``); the store tells
it about enqueues and every worker on that store tells it about runs. pqrun's own
Prometheus metrics (``pqrun.metrics``) are one such observer, so prometheus_client is
imported only by those who use it. The calls come on the event loop, once per job:
keep them quick, and never raise (an observer's error is logged and ignored).

Hooks added later (``schedule_ticked``, ``database_error``) are looked up on each call
(``tell_each``), so an observer written before they existed, even one that does not
inherit their defaults, keeps working.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from .models import Job

logger = logging.getLogger("pqrun")


class JobObserver:
    """Subclass and override what you need; every method does nothing by default.

    ``outcome`` is one of ``OUTCOMES``: ``done``, ``retried`` (back to READY after an
    error, attempts left), ``failed``, ``snoozed``, ``cancelled`` (stopped by
    ``store.cancel``) or ``ignored`` (the run no longer owned the job, so its outcome
    was not recorded).
    """

    def enqueued(self, job_type: str, count: int) -> None:
        """``count`` jobs of ``job_type`` were passed to ``enqueue``/``enqueue_many``.

        Called once the statement ran; inside a transaction that rolls back later they
        still count. An enqueue answered by a dedupe_key's active job counts too.
        """

    def started(self, job: Job) -> None:
        """A worker is about to run ``job``'s handler (attempt ``job.attempts``)."""

    def finished(self, job: Job, outcome: str, duration_seconds: float) -> None:
        """A run ended and its outcome is recorded (or was found moot: ``ignored``)."""

    def schedule_ticked(self, schedule: str, result: str) -> None:
        """A due tick of ``schedule`` was handled by a worker in this process.

        ``result`` is one of ``TICK_RESULTS``: ``enqueued`` (its job was enqueued),
        ``skipped`` (missed while no worker ran, and the schedule says
        ``missed="skip"``) or ``failed`` (its job could not be enqueued; the tick is
        skipped). Called once the transaction that handled it committed; each tick is
        handled once across all workers.
        """

    def database_error(self, worker_id: str, operation: str, kind: str) -> None:
        """A loop of worker ``worker_id`` failed (it retries, with backoff).

        ``operation`` is one of ``DATABASE_OPERATIONS`` (``claim``, ``outcome_write``,
        ``heartbeat``, ...), ``kind`` one of ``ERROR_KINDS``: ``connection`` (the
        connection or server went away), ``timeout`` (a statement ran past its
        timeout) or ``other``.
        """


OUTCOMES = ("done", "retried", "failed", "snoozed", "cancelled", "ignored")
TICK_RESULTS = ("enqueued", "skipped", "failed")
DATABASE_OPERATIONS = (
    "start",
    "claim",
    "outcome_write",
    "heartbeat",
    "listen",
    "reap",
    "prune",
    "vacuum",
    "schedule",
)
ERROR_KINDS = ("connection", "timeout", "other")


def tell(hook: Callable[..., None], *args: Any) -> None:
    """Call an observer's hook; its failure is logged, never the caller's problem."""
    try:
        hook(*args)
    except Exception:
        logger.exception("pqrun: observer %r failed", hook)


def tell_each(observers: Sequence[JobObserver], hook: str, *args: Any) -> None:
    """Call the hook named ``hook`` of every observer that has it (see the module)."""
    for observer in observers:
        method = getattr(observer, hook, None)
        if method is not None:
            tell(method, *args)
