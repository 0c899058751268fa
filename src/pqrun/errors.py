"""Exceptions pqrun raises, and the two a handler raises to steer its job."""

from __future__ import annotations

from datetime import timedelta


class PqrunError(Exception):
    """Base class of the errors pqrun raises itself."""


class DatabaseUnavailable(PqrunError):
    """PostgreSQL could not be reached. The message names the server and what to check."""


class SchemaMissing(PqrunError):
    """The ``jobs`` table is not in the connection's search_path: apply ddl.sql first."""


class NotPermitted(PqrunError):
    """This database role may not do what was asked; the message names who may."""


class UnknownJobType(PqrunError, KeyError):
    """A job type this worker has no handler for."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class JobConflict(PqrunError):
    """A move the job's current state does not allow, such as retrying a DONE job."""


class PayloadInvalid(PqrunError, ValueError):
    """A payload refused at enqueue: it does not match the job type's payload model (a
    Pydantic model), or a worker could not read it back (docs/configuration.md, "Limits
    on what can be enqueued")."""


class JobNotFound(PqrunError, LookupError):
    """No job has this id (it was never enqueued, or it was pruned)."""


class WorkerIdInUse(PqrunError):
    """Another live worker has this worker_id: each worker needs its own."""


class WaitTimeout(PqrunError, TimeoutError):
    """``store.wait()`` gave up: the job had not finished within the timeout."""


class Retry(Exception):
    """Raise from a handler to run the job again after ``after``.

    The run counts as an attempt: when attempts are used up the job becomes FAILED.
    """

    def __init__(self, after: timedelta | float = timedelta(0), reason: str = "") -> None:
        self.after = _delay(after, "Retry")
        self.reason = reason
        super().__init__(reason or f"retry requested in {after}")


class Fail(Exception):
    """Raise from a handler to fail the job at once, with no further attempts."""

    def __init__(self, reason: str = "failed by handler") -> None:
        self.reason = reason
        super().__init__(reason)


class Snooze(Exception):
    """Raise from a handler to run the job again after ``after``, without using an attempt.

    For "not now" rather than "failed": a resource is busy, a rate limit says wait.
    """

    def __init__(self, after: timedelta | float = timedelta(0), reason: str = "") -> None:
        self.after = _delay(after, "Snooze")
        self.reason = reason
        super().__init__(reason or f"snoozed for {after}")


def _delay(after: timedelta | float, raised: str) -> timedelta:
    if isinstance(after, int | float) and not isinstance(after, bool):
        after = timedelta(seconds=after)
    if not isinstance(after, timedelta) or after < timedelta(0):
        raise ValueError(f"{raised}(after=...) needs a timedelta >= 0 or seconds, got {after!r}")
    return after
