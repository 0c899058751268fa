"""The per-type, per-minute rollup (table ``job_type_minutes``): workers add what they
ran to it, and the dashboard's page of a job type reads it, so that page never counts
the jobs table (docs/observability.md).

Run times are kept as a histogram over RUN_MS_BOUNDS: a quantile read from it is the
bound of the bucket it falls in ("<= 50 ms"), not an exact time.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from .inspection import STATUS_COUNT_CAP
from .queries import query
from .schedules import DATABASE_NOW

if TYPE_CHECKING:
    from .connections import StoreConnections

ADD_TYPE_MINUTES = query("add_type_minutes")
CLAIM_DEPTH_MINUTE = query("claim_depth_minute")
SAMPLE_READY_DEPTH = query("sample_ready_depth")
PRUNE_TYPE_MINUTES = query("prune_type_minutes")
TYPE_MINUTES = query("type_minutes")

#: The upper bounds (milliseconds) of the run-time buckets; one more bucket counts the
#: runs longer than the last (an hour).
RUN_MS_BOUNDS = (
    1, 2, 5, 10, 20, 50, 100, 200, 500,
    1_000, 2_000, 5_000, 10_000, 20_000, 50_000,
    100_000, 200_000, 500_000, 1_000_000, 2_000_000, 3_600_000,
)  # fmt: skip
RUN_MS_BUCKETS = len(RUN_MS_BOUNDS) + 1
#: Rows older than this are deleted (the page shows a day; the rest is slack).
KEEP_TYPE_MINUTES = timedelta(days=2)
# The worker that samples a minute deletes at most this many old rows per transaction,
# this many transactions per minute: far more than are made in a minute.
PRUNE_BATCH = 1000
PRUNE_BATCHES = 10


def run_ms_bucket(duration_ms: int) -> int:
    """The index of the run-time bucket of a run that took ``duration_ms``."""
    return bisect_left(RUN_MS_BOUNDS, duration_ms)


@dataclass(frozen=True, slots=True)
class MinuteCounts:
    """What one worker adds to one (type, minute) row: ``age_seconds`` is how long ago
    the middle of that minute was, by the worker's clock (the row's minute is the
    database's ``now()`` less that)."""

    job_type: str
    age_seconds: float
    done: int
    failed: int
    retried: int
    run_ms_sum: int
    run_ms_buckets: Sequence[int]  # RUN_MS_BUCKETS long


@dataclass(frozen=True, slots=True)
class TypeMinute:
    """One minute of one job type (or, with ``job_type`` '', of the whole queue)."""

    job_type: str
    minute: datetime
    done: int
    failed: int
    retried: int
    run_ms_sum: int
    run_ms_buckets: tuple[int, ...]
    #: READY jobs (due or not) when sampled; None: no worker sampled that minute.
    ready_depth: int | None


class TypeMinuteMethods:
    """PgJobStore's writes (workers') and reads (the dashboard's) of the rollup."""

    _db: StoreConnections

    async def add_type_minutes(self, rows: Sequence[MinuteCounts]) -> None:
        """Add the counts of ``rows`` to the rollup, in one statement.

        Rows added by other workers for the same type and minute add up.
        """
        if not rows:
            return
        ordered = sorted(rows, key=lambda row: (row.job_type, -row.age_seconds))
        buckets: list[int] = []
        for row in ordered:
            if len(row.run_ms_buckets) != RUN_MS_BUCKETS:
                raise ValueError(
                    f"run_ms_buckets of {row.job_type!r} holds {len(row.run_ms_buckets)} "
                    f"counts; the rollup takes {RUN_MS_BUCKETS} (one per RUN_MS_BOUNDS, "
                    "and the longer runs)"
                )
            buckets.extend(row.run_ms_buckets)
        await self._db.execute(
            ADD_TYPE_MINUTES,
            [row.job_type for row in ordered],
            [row.age_seconds for row in ordered],
            [row.done for row in ordered],
            [row.failed for row in ordered],
            [row.retried for row in ordered],
            [row.run_ms_sum for row in ordered],
            buckets,
            RUN_MS_BUCKETS,
        )

    async def sample_ready_depth(self, count_cap: int = STATUS_COUNT_CAP) -> float:
        """Sample this minute's READY jobs per type into the rollup, unless another worker
        did already; the one that does also deletes rows older than KEEP_TYPE_MINUTES.

        Counts at most ``count_cap`` READY jobs in all. Returns the seconds until the
        next minute, by the database's clock.
        """
        timeout = self._db.statement_timeout
        async with self._db.acquire(join=False) as conn, conn.transaction():
            claim = await conn.fetchrow(CLAIM_DEPTH_MINUTE, timeout=timeout)
            assert claim is not None
            if claim["minute"] is not None:
                await conn.execute(SAMPLE_READY_DEPTH, claim["minute"], count_cap, timeout=timeout)
        if claim["minute"] is not None:
            for _ in range(PRUNE_BATCHES):
                deleted = await self._db.execute(PRUNE_TYPE_MINUTES, KEEP_TYPE_MINUTES, PRUNE_BATCH)
                if int(deleted.split()[-1]) < PRUNE_BATCH:  # "DELETE <n>"
                    break
        next_in: float = claim["next_in"]
        return next_in

    async def type_minutes(
        self, job_type: str, within: timedelta = timedelta(days=1)
    ) -> tuple[datetime, list[TypeMinute]]:
        """The database's now(), and the rollup rows of ``job_type`` and of the whole
        queue (``job_type`` '') from ``within`` before the current minute on, oldest
        first (the queue's rows, which sort first, then the type's)."""
        async with self._db.acquire() as conn:
            now: datetime = await conn.fetchval(DATABASE_NOW, timeout=self._db.statement_timeout)
            rows = await conn.fetch(
                TYPE_MINUTES, job_type, within, timeout=self._db.statement_timeout
            )
        return now, [
            TypeMinute(
                job_type=row["job_type"],
                minute=row["minute"],
                done=row["done"],
                failed=row["failed"],
                retried=row["retried"],
                run_ms_sum=row["run_ms_sum"],
                run_ms_buckets=tuple(row["run_ms_buckets"]),
                ready_depth=row["ready_depth"],
            )
            for row in rows
        ]
