"""The worker's side of the per-type rollup (table ``job_type_minutes``): it counts what
each run came to once its outcome is written, and adds the counts to the table every
FLUSH_INTERVAL seconds, and at shutdown, in one statement.

Counting is on the hot path, once per written outcome: a clock read, two dict lookups
and a few integer additions, no await (``TypeStats.record``). Runs that ended DONE,
FAILED or back to READY after an error count, with their run time; snoozes, runs whose
answer was ignored, and jobs moved by anything but a worker's run do not.

Flushing runs on the store's pool, never on the heartbeat's connection: liveness waits
on nothing else. A flush that fails keeps its counts for the next one (the outage log
says so once); counts older than KEEP_UNFLUSHED_MINUTES are then dropped, with one
warning per outage, so a long outage costs bounded memory. Nothing here touches a job.

Once a minute, each worker also offers to sample the READY jobs per type
(``store.sample_ready_depth``): the first of the queue's workers to claim the minute
does, the others do nothing.
"""

from __future__ import annotations

import logging
import random
import time
from bisect import bisect_left

import asyncpg

from pqrun._store.type_minutes import RUN_MS_BOUNDS, RUN_MS_BUCKETS, MinuteCounts

from .loops import Lifetime
from .outcome import RunOutcome
from .store_protocol import WorkerStore

logger = logging.getLogger("pqrun")

#: Seconds between two flushes of the counts.
FLUSH_INTERVAL = 10.0
#: Seconds a worker's shutdown (or the end of a drain) waits for its last flush: the
#: database may be gone.
LAST_FLUSH_WAIT = 5.0
#: Minutes of counts kept while flushes fail; older ones are dropped.
KEEP_UNFLUSHED_MINUTES = 60
# Workers offer to sample a minute's depth up to this many seconds after it starts, at
# random: all at once, they would only queue on the minute's row.
DEPTH_JITTER = 3.0
# The slots of one type's counts in one minute; the run-time buckets follow.
DONE, FAILED, RETRIED, RUN_MS_SUM, FIRST_BUCKET = range(5)
WIDTH = FIRST_BUCKET + RUN_MS_BUCKETS

Counts = dict[int, dict[str, list[int]]]  # minute (epoch // 60) -> job type -> slots


class TypeStats:
    """Counts runs per type and minute; ``run()`` flushes them and samples the depth."""

    def __init__(self, store: WorkerStore, life: Lifetime) -> None:
        self._store = store
        self._life = life
        self._minutes: Counts = {}
        # The current minute and its counts, so that most runs find them at once.
        self._minute = -1
        self._counts: dict[str, list[int]] = {}
        # Set when the database refuses the rollup for good (its role may not write it).
        self._off = False
        self._next_depth = 0.0  # monotonic time of the next offer to sample the depth
        self._dropped = False  # counts were dropped in this outage (said once)

    def record(self, job_type: str, kind: RunOutcome, duration_ms: int) -> None:
        """Count one run whose outcome was written."""
        if kind is RunOutcome.DONE:
            slot = DONE
        elif kind is RunOutcome.FAILED:
            slot = FAILED
        elif kind is RunOutcome.RETRIED:
            slot = RETRIED
        else:
            return
        if self._off:
            return
        minute = int(time.time()) // 60
        if minute != self._minute:
            self._counts = self._minutes.setdefault(minute, {})
            self._minute = minute
        counts = self._counts.get(job_type)
        if counts is None:
            counts = self._counts[job_type] = [0] * WIDTH
        counts[slot] += 1
        counts[RUN_MS_SUM] += duration_ms
        counts[FIRST_BUCKET + bisect_left(RUN_MS_BOUNDS, duration_ms)] += 1

    @property
    def unflushed_runs(self) -> int:
        """Runs counted and not yet added to the table."""
        return sum(
            c[DONE] + c[FAILED] + c[RETRIED] for t in self._minutes.values() for c in t.values()
        )

    async def run(self) -> None:
        """Flush every FLUSH_INTERVAL seconds and offer to sample each minute's depth."""
        await self._life.repeat(
            "type-stats", "recording the counts per job type", self._step,
            after_error=FLUSH_INTERVAL,
        )  # fmt: skip

    async def _step(self) -> float | None:
        try:
            await self.flush()
            now = time.monotonic()
            if now >= self._next_depth:
                next_minute = await self._store.sample_ready_depth()
                self._next_depth = now + next_minute + random.uniform(0.1, DEPTH_JITTER)
        except (asyncpg.InsufficientPrivilegeError, asyncpg.UndefinedTableError) as exc:
            self._off = True
            self._minutes.clear()
            self._minute = -1
            logger.error(
                "worker %s cannot write the counts per job type (%s: %s), so the dashboard's "
                "job type pages stay empty. Apply ddl.sql again (pqrun setup) and GRANT "
                "SELECT, INSERT, UPDATE, DELETE ON job_type_minutes to this role",
                self._life.worker_id,
                type(exc).__name__,
                exc,
            )
            return None  # for good: retrying would only repeat this
        return max(0.1, min(FLUSH_INTERVAL, self._next_depth - time.monotonic()))

    async def flush(self) -> None:
        """Add the counts gathered so far to the table; on failure, keep them and raise."""
        if not self._minutes:
            return
        taken, self._minutes = self._minutes, {}
        self._minute = -1  # the next run starts its minute's counts afresh
        wall = time.time()
        rows = [
            MinuteCounts(
                job_type,
                # The middle of the minute, as an age: the database dates it by its clock.
                wall - (minute * 60 + 30),
                counts[DONE],
                counts[FAILED],
                counts[RETRIED],
                counts[RUN_MS_SUM],
                counts[FIRST_BUCKET:],
            )
            for minute, types in taken.items()
            for job_type, counts in types.items()
        ]
        try:
            await self._store.add_type_minutes(rows)
        except BaseException:
            self._keep(taken)
            raise
        self._dropped = False

    async def flush_last(self) -> None:
        """At shutdown: one last flush, whose failure is only logged."""
        if self._off or not self._minutes:
            return
        try:
            await self.flush()
        except Exception as exc:
            logger.warning(
                "worker %s: the counts per job type of its last %d runs could not be "
                "recorded (%s: %s); the dashboard's job type pages miss them",
                self._life.worker_id,
                self.unflushed_runs,
                type(exc).__name__,
                exc,
            )

    def _keep(self, taken: Counts) -> None:
        """Put counts whose flush failed back, and drop what is too old to keep."""
        for minute, types in taken.items():
            into = self._minutes.setdefault(minute, {})
            for job_type, counts in types.items():
                mine = into.get(job_type)
                if mine is None:
                    into[job_type] = counts
                else:
                    for slot, count in enumerate(counts):
                        mine[slot] += count
        oldest = int(time.time()) // 60 - KEEP_UNFLUSHED_MINUTES
        stale = [minute for minute in self._minutes if minute < oldest]
        if not stale:
            return
        runs = sum(
            c[DONE] + c[FAILED] + c[RETRIED] for m in stale for c in self._minutes[m].values()
        )
        for minute in stale:
            del self._minutes[minute]
        if not self._dropped:
            self._dropped = True
            logger.warning(
                "worker %s: dropped the counts per job type of %d runs older than %d "
                "minutes, which could not be recorded; the dashboard's job type pages "
                "miss them (their jobs are not affected)",
                self._life.worker_id,
                runs,
                KEEP_UNFLUSHED_MINUTES,
            )
