"""The workers' moves of the state machine: claims, and the outcomes of runs.

Each move out of RUNNING names the claim it expects (``locked_by``, ``attempts`` and
``lease_id``); a move whose claim no longer owns the job changes nothing, and the
caller learns it from the return value. docs/state-machine.md lists the guards.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from pqrun.models import Job, JobStatus, job_from_claim, job_from_claim_in_codec

from .queries import query
from .rows import expected_claim, storable
from .session_settings import own_transaction, read_committed

if TYPE_CHECKING:
    from pqrun._json_encoding import JSONEncoding

    from .connections import Connection, StoreConnections

logger = logging.getLogger("pqrun")

PICKUP = query("pickup")
LIMIT_LOCK = query("limit_lock")
PICKUP_LIMITED = query("pickup_limited")
WAKE_WORKERS = query("wake_workers")
JOBS_LEFT_BEHIND = query("jobs_left_behind")
MARK_DONE = query("mark_done")
MARK_DONE_BATCH = query("mark_done_batch")
DELETE_DONE_BATCH = query("delete_done_batch")
MARK_ERROR = query("mark_error")
SNOOZE = query("snooze")
RELEASE = query("release")

# With concurrency_limit_per_key, a claim chooses among this many of the first due jobs
# of the type: keys beyond them wait until those ahead have run.
PER_KEY_WINDOW = 200

# A limited job type that another worker is claiming right now is looked at again after
# this long (seconds).
LIMIT_BUSY_RETRY_SECONDS = 0.02


class ClaimLimits(Protocol):
    """The flow-control limits of a handler (pqrun.handlers.Handler has them)."""

    @property
    def concurrency_limit(self) -> int | None: ...
    @property
    def concurrency_limit_per_key(self) -> int | None: ...
    @property
    def rate_limit(self) -> int | None: ...
    @property
    def rate_period(self) -> timedelta | float | None: ...


class WorkerMoves:
    """PgJobStore's claims and outcome writes (the worker's)."""

    _db: StoreConnections
    _encoding: JSONEncoding
    #: Whether the store's connections decode a timestamptz or a bigint otherwise than
    #: asyncpg does by default (a caller's pool with codecs of its own); None until a
    #: claim shows. Until then, and then only if so, claims also send their times as
    #: timestamptz, for that codec to decode.
    _claim_times_by_codec: bool | None = None

    def _learn_codec(self, rows: Sequence[Any], asked: bool) -> bool:
        """Whether this claim's Jobs take the times the connection decoded (*_decoded):
        when it decodes a timestamptz or a bigint otherwise than asyncpg does by default,
        and the claim asked for them (``asked``). Looked at on every claim: once a
        connection of the pool shows a codec of its own, every later claim asks."""
        if not rows:
            return False
        row = rows[0]
        locked_at = row["locked_at"]  # microseconds, as a bigint
        as_by_default = _default_timestamptz(row["created_at"]) and (
            locked_at is None or type(locked_at) is int
        )
        by_codec = not as_by_default
        if by_codec:
            self._claim_times_by_codec = True
        elif self._claim_times_by_codec is None:
            self._claim_times_by_codec = False
        return by_codec and asked

    async def pickup_batch(
        self, worker_id: str, job_types: Sequence[str] | None, limit: int
    ) -> list[Job]:
        """Claim up to ``limit`` due READY jobs of ``job_types`` (None: any type)."""
        asked = self._claim_times_by_codec is not False
        arguments = (worker_id, None if job_types is None else list(job_types), limit, asked)
        timeout = self._db.statement_timeout
        async with self._db.acquire() as conn:
            # Under a stricter default isolation, a row another worker claimed after this
            # claim's snapshot would fail it whole (docs/state-machine.md, Pickup).
            rows = await read_committed(
                self._db, conn, lambda: conn.fetch(PICKUP, *arguments, timeout=timeout)
            )
            in_codec = self._learn_codec(rows, asked)
            jobs = Claimed(await readable(self._db, conn, rows, worker_id, in_codec=in_codec))
        jobs.rows = len(rows)
        # RETURNING does not keep the order the ids were chosen in.
        in_pickup_order(jobs)
        return jobs

    async def pickup_limited(
        self, worker_id: str, job_type: str, handler: ClaimLimits, limit: int
    ) -> tuple[list[Job], float | None]:
        """Claim up to ``limit`` due jobs of ``job_type`` within ``handler``'s limits.

        Returns the jobs and, when this type cannot be claimed now (its rate limit is
        used up while jobs are due, or another worker is claiming it), in how many
        seconds to look again. Claims of one limited type are made one at a time across
        all workers.
        """
        period = handler.rate_period
        assert isinstance(period, timedelta)
        asked = self._claim_times_by_codec is not False
        async with self._db.acquire() as conn:
            # READ COMMITTED whatever the default: the claim after the lock counts from a
            # snapshot taken after it (docs/flow-control.md).
            async with own_transaction(conn):
                locked = await conn.fetchval(
                    LIMIT_LOCK,
                    f"{self._db.channel}:limits:{job_type}",
                    timeout=self._db.statement_timeout,
                )
                if not locked:
                    return [], LIMIT_BUSY_RETRY_SECONDS
                rows = await conn.fetch(
                    PICKUP_LIMITED,
                    worker_id,
                    job_type,
                    limit,
                    handler.concurrency_limit,
                    handler.concurrency_limit_per_key,
                    handler.rate_limit,
                    period,
                    PER_KEY_WINDOW,
                    asked,
                    timeout=self._db.statement_timeout,
                )
            # After the commit: a row that cannot be read is failed in a move of its own.
            claimed = [row for row in rows if row["id"] is not None]
            in_codec = self._learn_codec(claimed, asked)
            jobs = await readable(self._db, conn, claimed, worker_id, in_codec=in_codec)
        in_pickup_order(jobs)
        return jobs, rows[0]["room_in_seconds"] if rows else None

    async def wake_workers(self) -> None:
        """Wake the idle workers of this queue, as an insert would."""
        async with self._db.acquire() as conn:
            await conn.execute(WAKE_WORKERS, self._db.channel, timeout=self._db.statement_timeout)

    async def jobs_left_behind(
        self,
        hints: Sequence[tuple[str, int, int]],
        *,
        conn: Connection | None = None,
        within: float | None = None,
    ) -> bool:
        """True if, for any (job type, first id, last id) of ``hints``, a job of that
        type with an id in that range is READY and due: nobody woken for it took it."""
        async with self._db.acquire(conn) as c:
            left: bool = await c.fetchval(
                JOBS_LEFT_BEHIND,
                [job_type for job_type, _, _ in hints],
                [first_id for _, first_id, _ in hints],
                [last_id for _, _, last_id in hints],
                timeout=self._db.statement_timeout if within is None else within,
            )
        return left

    async def pickup(self, worker_id: str, job_types: Sequence[str] | None = None) -> Job | None:
        """Claim the next due READY job for ``worker_id``, or return None."""
        jobs = await self.pickup_batch(worker_id, job_types, 1)
        return jobs[0] if jobs else None

    async def mark_done(
        self,
        job: Job | int,
        result: Any = None,
        duration_ms: int | None = None,
        *,
        worker_id: str | None = None,
        attempt: int | None = None,
    ) -> bool:
        """RUNNING -> DONE, storing ``result`` as JSON.

        Pass the Job that ``pickup`` returned (or its id with ``worker_id`` and
        ``attempt``). Returns False, changing nothing, when that claim no longer owns
        the job (it was reaped, cancelled or picked again).
        """
        job_id, owner, attempt_no, lease = expected_claim(job, worker_id, attempt)
        result_json = self._encoding(result, f"result of job {job_id}", "result")
        status = await self._db.execute(
            MARK_DONE, job_id, owner, attempt_no, lease, result_json, duration_ms
        )
        return status == "UPDATE 1"

    async def delete_done_batch(
        self, done: Sequence[Job], *, conn: Connection | None = None
    ) -> set[tuple[int, int | None]]:
        """RUNNING -> deleted, in place of DONE, for a worker with ``delete_done=True``.

        Each row is guarded by its own claim, and a job that a ``store.wait()`` waits
        for or that other jobs depend on is left RUNNING for ``mark_done_batch``.
        Returns the (id, lease_id) of the claims whose job was deleted.
        """
        if not done:
            return set()
        done = sorted(done, key=lambda job: job.id)  # the one lock order, as below
        rows = await self._db.fetch(
            DELETE_DONE_BATCH,
            [job.id for job in done],
            [job.locked_by for job in done],
            [job.attempts for job in done],
            [job.lease_id for job in done],
            conn=conn,
        )
        return {(row["id"], row["lease_id"]) for row in rows}

    async def mark_done_batch(
        self, done: Sequence[tuple[Job, str, int]], *, conn: Connection | None = None
    ) -> set[tuple[int, int | None]]:
        """RUNNING -> DONE for many jobs in one statement: (job, result JSON text, duration_ms).

        Each row is guarded by its own claim. Returns the (id, lease_id) of the claims
        that moved their job; a claim missing from the set no longer owned its job, which
        was left as it was.
        """
        if not done:
            return set()
        # One lock order (by id) for every multi-row statement of a worker, so that two
        # of them never wait for each other.
        done = sorted(done, key=lambda item: item[0].id)
        rows = await self._db.fetch(
            MARK_DONE_BATCH,
            [job.id for job, _, _ in done],
            [job.locked_by for job, _, _ in done],
            [job.attempts for job, _, _ in done],
            [job.lease_id for job, _, _ in done],
            [result for _, result, _ in done],
            [duration for _, _, duration in done],
            conn=conn,
        )
        return {(row["id"], row["lease_id"]) for row in rows}

    async def mark_error(
        self,
        job: Job | int,
        error: str,
        retry_after: timedelta | None = None,
        terminal: bool = False,
        *,
        worker_id: str | None = None,
        attempt: int | None = None,
        duration_ms: int | None = None,
        conn: Connection | None = None,
    ) -> JobStatus | None:
        """RUNNING -> READY again after ``retry_after``, or FAILED.

        The job fails when ``terminal`` is true or its attempts are used up. Returns the
        new status, or None (changing nothing) when this claim no longer owns the job.
        """
        job_id, owner, attempt_no, lease = expected_claim(job, worker_id, attempt)
        status = await self._db.fetchval(
            MARK_ERROR,
            job_id,
            owner,
            attempt_no,
            lease,
            error,
            terminal,
            retry_after or timedelta(0),
            duration_ms,
            conn=conn,
        )
        return None if status is None else JobStatus(status)

    async def snooze(
        self,
        job: Job | int,
        after: timedelta,
        *,
        worker_id: str | None = None,
        attempt: int | None = None,
        duration_ms: int | None = None,
        conn: Connection | None = None,
    ) -> bool:
        """RUNNING -> READY after ``after``, without counting the attempt.

        False, changing nothing, when this claim no longer owns the job.
        """
        job_id, owner, attempt_no, lease = expected_claim(job, worker_id, attempt)
        status = await self._db.execute(
            SNOOZE, job_id, owner, attempt_no, lease, after, duration_ms, conn=conn
        )
        return status == "UPDATE 1"

    async def release(self, jobs: Sequence[Job], reason: str | None) -> list[int]:
        """RUNNING -> READY at once for jobs this worker claimed but will not finish.

        Used on shutdown, and to give a clogged buffer to idle workers. ``reason`` goes
        to ``last_error`` (None keeps it). Returns the ids that were still owned and so
        were released.
        """
        if not jobs:
            return []
        jobs = sorted(jobs, key=lambda job: job.id)  # the one lock order, as in completions
        # The channel is read once connected: starting the store may learn it.
        async with self._db.acquire() as conn:
            arguments = (
                [j.id for j in jobs],
                [j.locked_by for j in jobs],
                [j.attempts for j in jobs],
                [j.lease_id for j in jobs],
                reason,
                self._db.channel,
            )
            timeout = self._db.statement_timeout
            rows = await read_committed(
                self._db, conn, lambda: conn.fetch(RELEASE, *arguments, timeout=timeout)
            )
        return [row["id"] for row in rows]


class Claimed(list[Job]):
    """The jobs a claim took, and ``rows``: how many rows it claimed (a row that could
    not be read failed, and is not among the jobs)."""

    rows = 0


async def readable(
    db: StoreConnections,
    conn: Connection,
    rows: Sequence[Any],
    worker_id: str,
    *,
    in_codec: bool = False,
) -> list[Job]:
    """The rows ``worker_id`` claimed (pqrun.models.CLAIM_COLUMNS) as Jobs, read one by
    one; a row that cannot be read fails alone.

    The claim has committed: nothing here may raise, or the readable jobs would be
    stranded RUNNING with nobody to run them.
    """
    jobs: list[Job] = []
    build = job_from_claim_in_codec if in_codec else job_from_claim
    for row in rows:
        try:
            jobs.append(build(row, worker_id))
        except Exception as exc:  # json too deep, a number Python refuses, ...
            await fail_unreadable(db, conn, row, worker_id, exc)
    return jobs


def in_pickup_order(jobs: list[Job]) -> None:
    """Sort claimed jobs as the claim chose them (RETURNING does not keep that order);
    left as they came where a caller's codecs make ids or times that do not compare: the
    claim has committed, nothing here may raise."""
    with suppress(TypeError):
        jobs.sort(key=lambda j: (-j.priority, j.run_after, j.id))


def _default_timestamptz(value: Any) -> bool:
    """True for a timestamptz as asyncpg decodes it by default (an aware UTC datetime)."""
    return type(value) is datetime and value.tzinfo is UTC


async def fail_unreadable(
    db: StoreConnections, conn: Connection, row: Any, worker_id: str, exc: Exception
) -> None:
    """RUNNING (this claim) -> FAILED for a claimed row that cannot be read as a Job."""
    reason = storable(f"its payload could not be read: {type(exc).__name__}: {str(exc)[:300]}")
    logger.error(
        "job %s (%s) FAILED: %s",
        row["id"],
        row["job_type"],
        reason,
        extra={"job_id": row["id"], "job_type": row["job_type"], "outcome": "FAILED"},
    )
    try:
        await conn.fetchval(
            MARK_ERROR,
            row["id"],
            worker_id,
            row["attempts"],
            row["lease_id"],
            reason,
            True,  # terminal: reading it again would fail the same way
            timedelta(0),
            None,
            timeout=db.statement_timeout,
        )
    except Exception as write_exc:
        logger.error(
            "job %s: could not record that its payload is unreadable (%s: %s); the "
            "reaper takes it back once its claim is stale",
            row["id"],
            type(write_exc).__name__,
            write_exc,
        )
