"""What the store binds and reads: a new job's checked columns, the claim a move names.

The job's own columns are defined once, by ``pqrun.models.Job`` (``JOB_COLUMNS``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from pqrun._json_encoding import DEFAULT_ENCODING, JSONEncoding
from pqrun.limits import (
    INT32_MAX,
    check_int,
    check_run_at,
    check_run_delay,
    check_text,
    check_timeout_seconds,
    encode_payload,
)
from pqrun.models import Job, JobStatus


class NewJobRow(NamedTuple):
    """A job to insert, checked: the parameters of the named query ``enqueue``, in order
    (its last, ``trace_context``, comes from the enqueue span)."""

    job_type: str
    payload: str
    priority: int
    run_at: datetime | None
    delay: timedelta
    dedupe_key: str | None
    max_attempts: int
    timeout_seconds: int | None
    concurrency_key: str | None


#: The parameters of the named query ``enqueue``, by name (for DB-API drivers).
ENQUEUE_PARAMETERS: tuple[str, ...] = (*NewJobRow._fields, "trace_context")


def new_job_row(
    job_type: str,
    payload: Any = None,
    priority: int = 0,
    run_after: datetime | timedelta | None = None,
    dedupe_key: str | None = None,
    max_attempts: int = 5,
    timeout_seconds: int | timedelta | None = None,
    concurrency_key: str | None = None,
    *,
    encoding: JSONEncoding = DEFAULT_ENCODING,
) -> NewJobRow:
    """Check enqueue's arguments and turn them into the columns the enqueue binds.

    ``encoding`` is the store's: how the payload becomes JSON text.
    """
    if not isinstance(job_type, str) or not job_type:
        raise ValueError(f"job_type must be a non-empty string, got {job_type!r}")
    check_text("job_type", job_type)
    payload_json = encode_payload(payload, f"payload of {job_type!r}", encoding)
    if concurrency_key is not None and not isinstance(concurrency_key, str):
        raise TypeError(
            f"concurrency_key must be a string or None, got {type(concurrency_key).__name__} "
            f"{concurrency_key!r}"
        )
    if concurrency_key is not None:
        check_text("concurrency_key", concurrency_key)
    check_int("priority", priority, -INT32_MAX)
    check_int("max_attempts", max_attempts, 1)
    timeout_seconds = check_timeout_seconds(timeout_seconds)
    if dedupe_key is not None and (not isinstance(dedupe_key, str) or not dedupe_key):
        raise ValueError(f"dedupe_key must be a non-empty string or None, got {dedupe_key!r}")
    if dedupe_key is not None:
        check_text("dedupe_key", dedupe_key)
    run_at: datetime | None = None
    delay = timedelta(0)
    if isinstance(run_after, datetime):
        run_at = check_run_at(run_after)
    elif isinstance(run_after, timedelta):
        delay = check_run_delay(run_after)
    elif run_after is not None:
        raise TypeError(f"run_after must be a datetime, a timedelta or None, got {run_after!r}")
    return NewJobRow(
        job_type,
        payload_json,
        priority,
        run_at,
        delay,
        dedupe_key,
        max_attempts,
        timeout_seconds,
        concurrency_key,
    )


def storable(text: str) -> str:
    """``text`` as a PostgreSQL text column takes it: no NUL, no lone surrogates."""
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def claim_ids(jobs: Sequence[Job]) -> tuple[list[int], list[int | None]]:
    """The job ids and lease_ids of ``jobs``, in id order (the order rows are locked in)."""
    ordered = sorted(jobs, key=lambda job: job.id)
    return [job.id for job in ordered], [job.lease_id for job in ordered]


def expected_claim(
    job: Job | int, worker_id: str | None, attempt: int | None
) -> tuple[int, str, int, int | None]:
    """The (id, locked_by, attempts, lease_id) a move out of RUNNING must find on the row."""
    if isinstance(job, Job):
        if job.locked_by is None:
            raise ValueError(f"job {job.id} has no owner: pass the Job that pickup() returned")
        return (
            job.id,
            worker_id or job.locked_by,
            job.attempts if attempt is None else attempt,
            job.lease_id,
        )
    if worker_id is None or attempt is None:
        raise TypeError(
            f"job {job}: pass the Job that pickup() returned, or the job id together with "
            "worker_id= and attempt=, so that only the attempt that owns the job can move it"
        )
    return job, worker_id, attempt, None


def status_filter(status: JobStatus | str | None) -> str | None:
    """The status a read filters on (None: any), or ValueError naming the valid ones."""
    if status is None:
        return None
    try:
        return JobStatus(status).value
    except ValueError:
        valid = ", ".join(s.value for s in JobStatus)
        raise ValueError(f"unknown job status {status!r}; use one of {valid}") from None
