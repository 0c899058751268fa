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
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from pqrun.limits import check_int

from .inspection import STATUS_COUNT_CAP
from .queries import query
from .schedules import DATABASE_NOW
from .session_settings import own_transaction

if TYPE_CHECKING:
    from .connections import StoreConnections

ADD_TYPE_MINUTES = query("add_type_minutes")
CLAIM_DEPTH_MINUTE = query("claim_depth_minute")
SAMPLE_READY_DEPTH = query("sample_ready_depth")
PRUNE_TYPE_MINUTES = query("prune_type_minutes")
TYPE_SLOTS = query("type_slots")
TYPE_RUN_TIMES = query("type_run_times")

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
class TypeSlots:
    """A span of one job type's rollup cut in equal slots, oldest first, the last holding
    now (``store.type_slots``)."""

    #: When each slot starts (by the database's clock).
    starts: list[datetime]
    done: list[int]
    failed: list[int]
    retried: list[int]
    #: The most READY jobs of the type sampled in each slot: 0 when the slot was sampled
    #: and none were READY, None when no worker sampled it.
    depth: list[int | None]
    run_ms_sum: int
    #: The runs of the whole span by run time (RUN_MS_BOUNDS, and longer).
    run_ms_buckets: list[int]
    #: Some sample of the span counted ``count_cap`` READY jobs of all types: its
    #: counts are lower bounds.
    capped: bool

    @property
    def runs(self) -> int:
        """Runs counted: done, failed and retried."""
        return sum(self.done) + sum(self.failed) + sum(self.retried)


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
        # (READ COMMITTED, as every statement of the store's: under a stricter default
        # isolation, two workers adding to one minute's row failed one of them.)
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
        async with self._db.acquire(join=False) as conn, own_transaction(conn):
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

    async def type_slots(
        self,
        job_type: str,
        spans: Sequence[tuple[timedelta, int]],
        count_cap: int = STATUS_COUNT_CAP,
    ) -> list[TypeSlots]:
        """For each ``(slot, count)`` of ``spans``: the last ``count`` slots of length
        ``slot`` of ``job_type``'s rollup, the last holding now by the database's clock.

        Slots are aligned to multiples of their length since the epoch (15 minutes: at
        :00, :15, ...). ``count_cap`` is the cap the depth samples were counted with.
        """
        timeout = self._db.statement_timeout
        result = []
        async with self._db.acquire() as conn:
            now: datetime = await conn.fetchval(DATABASE_NOW, timeout=timeout)
            for slot, count in spans:
                seconds = round(slot.total_seconds())
                if seconds < 60 or seconds % 60:
                    raise ValueError(f"type_slots: a slot is whole minutes, got {slot}")
                check_int("count", count, 1)
                last = int(now.timestamp()) // seconds * seconds
                first = datetime.fromtimestamp(last - (count - 1) * seconds, UTC)
                rows = await conn.fetch(TYPE_SLOTS, job_type, first, seconds, timeout=timeout)
                buckets = await conn.fetchval(TYPE_RUN_TIMES, job_type, first, timeout=timeout)
                span = TypeSlots(
                    starts=[first + i * slot for i in range(count)],
                    done=[0] * count,
                    failed=[0] * count,
                    retried=[0] * count,
                    depth=[None] * count,
                    run_ms_sum=sum(row["run_ms_sum"] for row in rows),
                    run_ms_buckets=list(buckets or [0] * RUN_MS_BUCKETS),
                    capped=any((row["sampled"] or 0) >= count_cap for row in rows),
                )
                for row in rows:
                    index = row["slot"]
                    if not 0 <= index < count:
                        continue  # a row dated ahead of now (a clock set back)
                    span.done[index] = row["done"]
                    span.failed[index] = row["failed"]
                    span.retried[index] = row["retried"]
                    if row["depth"] is not None:
                        span.depth[index] = row["depth"]
                    elif row["sampled"] is not None:
                        span.depth[index] = 0  # sampled, and none of this type was READY
                result.append(span)
        return result
