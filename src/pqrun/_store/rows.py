"""What the store binds and reads: a new job's checked columns, the claim a move names.

The job's own columns are defined once, by ``pqrun.models.Job`` (``JOB_COLUMNS``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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
from pqrun.models import Earlier, Job, JobStatus


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
    # The ids it waits for, as an array literal ("{12,13}"; in enqueue_many, -n names
    # the n-th row of the same statement); None: none.
    depends_on: str | None = None
    on_dependency_failure: str | None = None  # None: cancel (the default)


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
    depends_on: Iterable[int | Earlier] | None = None,
    on_dependency_failure: str = "cancel",
    *,
    encoding: JSONEncoding = DEFAULT_ENCODING,
    earlier_rows: Sequence[int | None] | None = None,
) -> NewJobRow:
    """Check enqueue's arguments and turn them into the columns the enqueue binds.

    ``encoding`` is the store's: how the payload becomes JSON text. ``earlier_rows``
    (enqueue_many): for each earlier item, the row of the statement that carries it,
    which an ``Earlier(i)`` in ``depends_on`` stands for; None where none may be named.
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
        dependencies_literal(depends_on, dedupe_key, earlier_rows),
        dependency_failure(on_dependency_failure),
    )


#: The most jobs one job may depend on.
MAX_DEPENDENCIES = 1000


def dependencies_literal(
    depends_on: Iterable[int | Earlier] | None,
    dedupe_key: str | None,
    earlier_rows: Sequence[int | None] | None,
) -> str | None:
    """``depends_on`` checked, as the array literal the statements bind (None: none)."""
    if depends_on is None:
        return None
    if isinstance(depends_on, (str, bytes, int)) or not isinstance(depends_on, Iterable):
        raise TypeError(
            f"depends_on must be a list of job ids, got {type(depends_on).__name__} {depends_on!r}"
        )
    found: list[int] = []
    for item in depends_on:
        if isinstance(item, Earlier):
            if earlier_rows is None:
                raise TypeError("Earlier(...) names an item of the same enqueue_many call")
            if not isinstance(item.index, int) or not 0 <= item.index < len(earlier_rows):
                raise ValueError(
                    f"depends_on {item!r}: an item may depend only on the items before it "
                    f"(0 to {len(earlier_rows) - 1})"
                    if earlier_rows
                    else f"depends_on {item!r}: the first item has no earlier item"
                )
            row = earlier_rows[item.index]
            if row is None:
                raise ValueError(
                    f"depends_on {item!r}: that item has a dedupe_key, so its job may be "
                    "one enqueued before this call; enqueue it first and name its id"
                )
            found.append(-(row + 1))  # the statement's row, counted from 1
        elif isinstance(item, int) and not isinstance(item, bool) and item > 0:
            check_int("depends_on", item, 1)
            found.append(item)
        else:
            raise TypeError(f"depends_on holds job ids (positive ints), got {item!r}")
    if not found:
        return None
    if len(found) > MAX_DEPENDENCIES:
        raise ValueError(f"depends_on names {len(found)} jobs; at most {MAX_DEPENDENCIES}")
    if dedupe_key is not None:
        raise ValueError(
            "a job cannot have both a dedupe_key and depends_on: a WAITING job holds no "
            "dedupe key; give it one or the other"
        )
    return "{" + ",".join(str(n) for n in found) + "}"


def dependency_failure(on_dependency_failure: str) -> str | None:
    """``on_dependency_failure`` checked: None for the default ("cancel")."""
    if on_dependency_failure not in ("cancel", "run"):
        raise ValueError(
            f"on_dependency_failure must be 'cancel' or 'run', got {on_dependency_failure!r}"
        )
    return None if on_dependency_failure == "cancel" else on_dependency_failure


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
