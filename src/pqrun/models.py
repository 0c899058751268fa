"""The job record and its states, as the store reads them from the ``jobs`` table."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, fields
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    """Where a job is in its life. See docs/state-machine.md for the moves between them."""

    WAITING = "WAITING"
    """Waits for the jobs in its ``depends_on`` to be DONE; no worker takes it until
    then (docs/workflows.md)."""
    READY = "READY"
    """Waiting for a worker; picked once ``run_after`` has passed."""
    RUNNING = "RUNNING"
    """Claimed by the worker named in ``locked_by`` for attempt number ``attempts``."""
    DONE = "DONE"
    """The handler returned; its return value is in ``result``."""
    FAILED = "FAILED"
    """Attempts ran out, the handler raised ``Fail``, or the reaper gave up on it."""
    CANCELLED = "CANCELLED"
    """Cancelled by ``store.cancel``; never runs again unless ``store.retry`` is called."""

    @property
    def is_finished(self) -> bool:
        """True for the states a job only leaves by an explicit ``store.retry``."""
        return self in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass(frozen=True, slots=True)
class Job:
    """One row of the ``jobs`` table. ``payload`` and ``result`` are decoded JSON."""

    id: int
    job_type: str
    payload: Any
    status: JobStatus
    priority: int
    attempts: int
    max_attempts: int
    run_after: datetime
    timeout_seconds: int | None
    locked_at: datetime | None
    locked_by: str | None
    lease_id: int | None
    #: When the run that holds the job was claimed. (A worker's liveness is its row in
    #: job_workers, which lists the claims it holds: ``store.list_workers()``.)
    heartbeat_at: datetime | None
    dedupe_key: str | None
    last_error: str | None
    finished_at: datetime | None
    duration_ms: int | None
    result: Any
    created_at: datetime
    updated_at: datetime
    #: Jobs with the same key count together against ``concurrency_limit_per_key``.
    concurrency_key: str | None = None
    #: The W3C traceparent of the span that enqueued the job (OpenTelemetry), if any.
    trace_context: str | None = None

    @classmethod
    def from_record(cls, row: Mapping[str, Any]) -> Job:
        """Build a Job from a row whose jsonb columns were selected as text."""
        return _job_from_record(cls, row)


@dataclass(frozen=True, slots=True)
class Earlier:
    """In ``enqueue_many``, an item's dependency on an earlier item of the same call:
    ``{"job_type": "album", "depends_on": [Earlier(0), Earlier(1)]}`` waits for the jobs
    of items 0 and 1 (counted from 0, as the list is)."""

    index: int


@dataclass(frozen=True, slots=True)
class AttemptError:
    """One failed or taken-back attempt of a job, from ``store.error_history(job_id)``.

    ``outcome`` is ``retried`` or ``failed`` (the handler's error, as its worker wrote
    it), or ``reaped`` or ``abandoned`` (the reaper took the run back after its worker
    gave no sign of life). ``error`` is cut to its first 2,000 characters.
    """

    attempt: int
    at: datetime
    worker: str | None
    outcome: str
    error: str

    @classmethod
    def list_from_json(cls, text: str | None) -> list[AttemptError]:
        """The entries of an ``error_history`` value; what is not an entry pqrun wrote
        (a value changed by hand) is left out."""
        entries = json.loads(text) if text else []
        if not isinstance(entries, list):
            return []
        found = []
        for entry in entries:
            try:
                found.append(
                    cls(
                        attempt=int(entry.get("attempt") or 0),
                        at=datetime.fromisoformat(str(entry["at"])).astimezone(UTC),
                        worker=None if entry.get("worker") is None else str(entry["worker"]),
                        outcome=str(entry.get("outcome") or ""),
                        error=str(entry.get("error") or ""),
                    )
                )
            except (AttributeError, KeyError, TypeError, ValueError):
                continue
        return found


#: The columns of ``jobs`` a Job holds, in order: the one list every job-returning query
#: selects (tests/test_named_queries.py checks them against it).
JOB_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Job))


def _decode_result(text: str | None) -> Any:
    return None if text is None else json.loads(text)


_decode_json = json.JSONDecoder().decode  # json.loads without its checks of the argument


def _decode_payload(text: str) -> Any:
    # The default payload, and the commonest: a new dict each time (handlers may change it).
    return {} if text == "{}" else _decode_json(text)


# A dict lookup rather than JobStatus(text), which goes through Enum's metaclass per row.
_status_of = {status.value: status for status in JobStatus}.__getitem__

_DECODERS: dict[str, str] = {
    "payload": "_decode_payload",
    "status": "_status_of",
    "result": "_decode_result",
}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The claim times lately sent, by their microseconds since 1970: a claim's jobs share
# one, built once. Cleared past _CLAIM_TIMES_KEPT entries, so that it stays small.
_claim_times: dict[int, datetime] = {}
_CLAIM_TIMES_KEPT = 64


def _claim_time(micros: int | None) -> datetime | None:
    """The claim's time (locked_at), sent as microseconds since 1970 (UTC)."""
    if micros is None:
        return None  # (an application's trigger emptied locked_at)
    at = _claim_times.get(micros)
    if at is None:
        if len(_claim_times) >= _CLAIM_TIMES_KEPT:
            _claim_times.clear()
        try:
            # (int(): a caller's pool may decode a bigint as something else, a str say.)
            at = _EPOCH + timedelta(microseconds=int(micros))
        except (TypeError, ValueError, OverflowError):
            # A bigint as something int() does not take: the claim asks for its times
            # as timestamptz from now on (PgJobStore's pickup); this one stays unknown.
            return None
        _claim_times[micros] = at
    return at


#: What a claim sets on every job it takes, and so does not send back: the claim's
#: RETURNING leaves these columns out (decoding them took about a third of asyncpg's
#: time per claimed row), and ``job_from_claim`` fills them in. heartbeat_at is set to
#: the same time as locked_at by the same UPDATE. (updated_at is sent back: an
#: application's own trigger may set it, as many do on every table.)
CLAIM_SETS: dict[str, str] = {
    "status": "_RUNNING",
    "locked_by": "worker_id",
    "heartbeat_at": "_claim_time(row['locked_at'])",
    "finished_at": "None",
    "result": "None",
}

#: How ``job_from_claim`` reads the claim's time, which every job of a claim shares. A
#: timestamptz costs asyncpg about 0.75 us to decode, two of them a twentieth of the
#: worker's CPU per job: locked_at comes as microseconds since 1970, each distinct one
#: built once, and updated_at as NULL when it is locked_at (unless an application's
#: trigger set it to something else).
CLAIM_TIMES: dict[str, str] = {
    "locked_at": "_claim_time(row['locked_at'])",
    "updated_at": "_claim_time(row['locked_at']) if row['updated_at'] is None "
    "else row['updated_at']",
}

#: The same for ``job_from_claim_in_codec``, on a connection that decodes a timestamptz
#: otherwise than asyncpg does by default (a caller's pool with a codec of its own): the
#: claim also sends both times as that connection decodes them (CLAIM_DECODED_TIMES).
CLAIM_TIMES_IN_CODEC: dict[str, str] = {
    "locked_at": "row['locked_at_decoded']",
    "updated_at": "row['updated_at_decoded']",
}

#: What a claim sends besides CLAIM_COLUMNS, at the end: the claim's times as the
#: connection decodes a timestamptz, where that is not asyncpg's default (else NULL).
CLAIM_DECODED_TIMES: tuple[str, ...] = ("locked_at_decoded", "updated_at_decoded")

#: The columns a claim (pickup, pickup_limited) returns, in order.
CLAIM_COLUMNS: tuple[str, ...] = tuple(c for c in JOB_COLUMNS if c not in CLAIM_SETS)


def _compile_builder(
    name: str,
    parameters: str,
    given: Mapping[str, str],
    read_as: Mapping[str, str] | None = None,
) -> Any:
    """A function that builds a Job from a row, written out from JOB_COLUMNS (a worker
    builds one per claimed row; a loop over the columns was about 1.5x slower).

    A Job is made with ``object.__new__`` and its slots set through their descriptors,
    as the frozen dataclass's ``__init__`` does, without its keyword parsing and its
    ``object.__setattr__`` lookups (half the cost). A subclass is built by calling it, so
    that its own ``__init__`` or ``__post_init__`` runs. ``given``: the expression of a
    column's value where it is not read from the row; ``read_as``: where it is read
    from the row otherwise than as it is.
    """
    values = []
    for field in fields(Job):
        if field.name in given:
            values.append((field.name, given[field.name]))
            continue
        if read_as and field.name in read_as:
            values.append((field.name, read_as[field.name]))
            continue
        # Columns added after the first release may be missing from a row (as in Job).
        read = f"row[{field.name!r}]" if field.default is MISSING else f"row.get({field.name!r})"
        decode = _DECODERS.get(field.name)
        values.append((field.name, read if decode is None else f"{decode}({read})"))
    lines = [f"def {name}({parameters}):"]
    if parameters.startswith("cls"):
        keywords = ", ".join(f"{column}={value}" for column, value in values)
        lines += ["    if cls is not _Job:", f"        return cls({keywords})"]
    lines.append("    job = _new(_Job)")
    lines += [f"    _set_{column}(job, {value})" for column, value in values]
    lines.append("    return job")
    namespace: dict[str, Any] = {
        "_decode_result": _decode_result,
        "_decode_payload": _decode_payload,
        "_status_of": _status_of,
        "_claim_time": _claim_time,
        "_RUNNING": JobStatus.RUNNING,
        "_Job": Job,
        "_new": object.__new__,
    }
    for field in fields(Job):
        namespace[f"_set_{field.name}"] = getattr(Job, field.name).__set__
    exec(compile("\n".join(lines) + "\n", f"<pqrun.models.{name}>", "exec"), namespace)
    return namespace[name]


_job_from_record: Callable[[type[Job], Mapping[str, Any]], Job] = _compile_builder(
    "from_record", "cls, row", {}
)

#: ``job_from_claim(row, worker_id)``: the Job a claim's row (CLAIM_COLUMNS) stands for.
job_from_claim: Callable[[Mapping[str, Any], str], Job] = _compile_builder(
    "job_from_claim", "row, worker_id", CLAIM_SETS, CLAIM_TIMES
)

#: The same, with the claim's times as the connection decoded them (CLAIM_DECODED_TIMES).
job_from_claim_in_codec: Callable[[Mapping[str, Any], str], Job] = _compile_builder(
    "job_from_claim_in_codec",
    "row, worker_id",
    CLAIM_SETS | {"heartbeat_at": "row['locked_at_decoded']"},
    CLAIM_TIMES_IN_CODEC,
)


class RawJSON(str):
    """JSON text that is stored as it is, without encoding it again.

    Return one from a handler (or pass one as a payload) when you already hold the JSON
    text, for example from ``orjson.dumps(...).decode()``.
    """

    __slots__ = ()


def is_pydantic_model(value: Any) -> bool:
    """True for an instance of a Pydantic model (without importing Pydantic)."""
    return hasattr(value, "model_dump_json") and hasattr(type(value), "model_validate")
