"""The fetcher: claims due jobs into the worker's buffer, for the slots to run.

One statement claims a batch (``FOR UPDATE SKIP LOCKED LIMIT n``): up to the free slots,
plus a prefetch sized to about 50 ms of work at the handlers' measured speed (none for
slow handlers). Job types with a concurrency or rate limit are claimed apart, within
their limits (docs/flow-control.md). With nothing due, it sleeps per the idle policy, but
no later than the next due time it knows of; the listener wakes it sooner.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress

from pqrun.errors import DatabaseUnavailable
from pqrun.models import Job

from .loops import Lifetime
from .outcome_writer import OutcomeWriter
from .runs import RunRegistry
from .settings import WorkerSettings
from .store_protocol import WorkerStore

# The prefetch holds about this much work, at the handlers' average speed.
PREFETCH_SECONDS = 0.05
# A prefetched job waits at most about this long (seconds) for a slot while every slot is
# busy: then the buffer goes back to READY, for idle workers to take (handler times vary:
# the average that sized the prefetch did not foresee slots held this long).
BUFFER_WAIT_LIMIT = 0.5
# After giving its buffer back, a worker claims only for free slots this long (seconds).
NO_PREFETCH_SECONDS = 5.0
# Weight of the newest run in the average handler duration.
DURATION_SMOOTHING = 0.1
# How long drain() waits for outcomes it cannot write before it gives up (seconds).
DRAIN_WRITE_WAIT = 60.0
# Due times of delayed jobs a worker remembers to wake for (the earliest are kept).
MAX_DUE_TIMES = 1000
# While a worker is busy, a limited job type that had nothing due is claimed again after
# this long (seconds) at the latest, or at once when one of its jobs finishes here.
LIMITED_RECHECK_SECONDS = 0.05


class Fetcher:
    """Claims jobs into ``registry.buffer`` until stopped (or, draining, none are due).

    ``want_more`` is set when the buffer runs low or a slot frees; ``wakeup`` when a job
    may have come due (a notification, a known due time, a limited type's freed room).
    """

    def __init__(
        self,
        settings: WorkerSettings,
        store: WorkerStore,
        registry: RunRegistry,
        writer: OutcomeWriter,
        life: Lifetime,
    ) -> None:
        self._settings = settings
        self._store = store
        self._registry = registry
        self._writer = writer
        self._life = life
        self._worker_id = settings.worker_id
        self._concurrency = settings.concurrency
        self._job_types = settings.job_types
        self._limited = settings.limited
        self._unlimited_types = settings.unlimited_types
        self.want_more = asyncio.Event()
        self.wakeup = asyncio.Event()
        self._due_at: list[float] = []  # heap of epoch seconds when known jobs come due
        self._average_seconds: float | None = None
        self.prefetch_target = 0
        # Monotonic time until which nothing is prefetched (0: prefetch as measured).
        self._no_prefetch_until = 0.0
        # Monotonic time before which a limited type that had nothing due is not claimed.
        self._limited_recheck_at: dict[str, float] = {}
        self._limited_first = True

    def is_limited(self, job_type: str) -> bool:
        return job_type in self._limited

    def measured(self, seconds: float) -> None:
        """Fold a handler's duration into the average, and size the prefetch from it."""
        if self._no_prefetch_until:
            if time.monotonic() < self._no_prefetch_until:
                return
            self._no_prefetch_until = 0.0
        if self._average_seconds is None:
            self._average_seconds = seconds
        else:
            self._average_seconds += DURATION_SMOOTHING * (seconds - self._average_seconds)
        if self._settings.prefetch_limit:
            # About PREFETCH_SECONDS of work beyond the free slots, no more.
            per_slot = PREFETCH_SECONDS / max(self._average_seconds, 1e-6)
            self.prefetch_target = min(
                self._settings.prefetch_limit, int(self._concurrency * per_slot)
            )

    def stop_prefetching(self) -> None:
        """Claim only for free slots for a while: prefetched jobs waited too long."""
        self._no_prefetch_until = time.monotonic() + NO_PREFETCH_SECONDS
        self.prefetch_target = 0

    def clogged_buffer(self, others_take: Callable[[str], bool]) -> list[tuple[Job, float]]:
        """The buffered jobs (with their claim times) to give back, taken out of the
        buffer: none unless a job has waited BUFFER_WAIT_LIMIT with every slot busy; then
        those another worker takes (``others_take(job_type)``), but no job of a limited
        type (its rate or concurrency slot was spent on the claim). Prefetching stops
        for a while."""
        registry = self._registry
        if not registry.buffer or len(registry.running) < self._concurrency:
            return []
        # (Not always the first: limited types are buffered in priority order.)
        oldest = min(claimed_at for _job, claimed_at in registry.buffer)
        if time.monotonic() - oldest < BUFFER_WAIT_LIMIT:
            return []
        self.stop_prefetching()
        given: list[tuple[Job, float]] = []
        kept: deque[tuple[Job, float]] = deque()
        for entry in registry.buffer:
            job_type = entry[0].job_type
            if job_type not in self._limited and others_take(job_type):
                given.append(entry)
            else:
                kept.append(entry)
        registry.buffer = kept
        return given

    def claim_room(self) -> int:
        """How many jobs this worker would claim if woken now (0 when stopping)."""
        if self._life.stopping.is_set():
            return 0
        return max(self._claim_size(), 0)

    def runs_low(self, taking: int = 0) -> bool:
        """True when the buffer is down to half the prefetch (once ``taking`` jobs are
        taken from it): time to claim more."""
        return len(self._registry.buffer) - taking <= self.prefetch_target // 2

    def _claim_size(self) -> int:
        prefetch = self.prefetch_target
        buffered = len(self._registry.buffer)
        if buffered > prefetch // 2:
            return 0  # enough in hand; claim again when it runs low
        return self._concurrency + prefetch - buffered - len(self._registry.running)

    async def run(self, *, drain: bool) -> bool:
        """Claim jobs until stopped (False), or, draining, until none are due (True)."""
        idle_polls = 0
        errors = self._life.streak("fetch")
        registry = self._registry
        stopping = self._life.stopping
        while not stopping.is_set():
            self.want_more.clear()
            want = self._claim_size()
            if want <= 0:
                await self.want_more.wait()
                continue
            self.wakeup.clear()
            written_before = registry.outcomes_written
            try:
                jobs = await self._claim(want, drain=drain)
            except Exception as exc:
                if drain:
                    raise
                errors.failed("claiming jobs", exc)
                await self._life.sleep(errors.wait())
                continue
            errors.succeeded()
            if jobs:
                idle_polls = 0
                # (Rows claimed, not jobs: a row that could not be read failed alone.)
                if drain or getattr(jobs, "rows", len(jobs)) >= want or self._limited:
                    continue
                # Fewer than asked for: nothing else was due. Claiming again at once would
                # only find nothing (one empty claim per job, for each idle worker);
                # wait for a notification, a known due time or the poll.
                await self._idle_sleep(0)
                continue
            if drain:
                if registry.buffer or registry.running:
                    await self.want_more.wait()  # a finishing job may have enqueued more
                    continue
                if self._limited_recheck_at:
                    # Due jobs of a limited type wait for its rate limit, or another
                    # worker is claiming them: due work all the same.
                    soonest = min(self._limited_recheck_at.values()) - time.monotonic()
                    await self._life.sleep(max(soonest, 0.0))
                    continue
                if not self._writer.idle or registry.outcomes_written != written_before:
                    # An outcome written during (or after) that claim may have made a
                    # retry due now: write everything, then look once more.
                    try:
                        await asyncio.wait_for(self._writer.flush(), DRAIN_WRITE_WAIT)
                    except TimeoutError:
                        raise DatabaseUnavailable(
                            f"drain() could not record outcomes for {DRAIN_WRITE_WAIT:.0f} s"
                        ) from None
                    continue
                return True
            idle_polls += 1
            await self._idle_sleep(idle_polls)
        return False

    async def _claim(self, want: int, *, drain: bool = False) -> list[Job]:
        """Claim up to ``want`` jobs into the buffer (and return them): limited types
        within their limits, then the rest."""
        jobs: list[Job] = []
        if not self._limited:
            jobs = await self._store.pickup_batch(self._worker_id, self._job_types, want)
            self._buffered(jobs)
            return jobs
        # With fewer free slots than due jobs, the group claimed first wins them; take
        # turns, so that neither the limited types nor the others wait for the other
        # group to run dry. (Within a round, the buffer runs jobs by priority.)
        limited_first = self._limited_first or not self._unlimited_types
        self._limited_first = not self._limited_first
        try:
            if limited_first:
                await self._claim_limited(want, jobs, drain=drain)
                want -= len(jobs)
            if self._unlimited_types and want > 0:
                jobs += await self._store.pickup_batch(self._worker_id, self._unlimited_types, want)
            if not limited_first:
                await self._claim_limited(want - len(jobs), jobs, drain=drain)
        finally:
            # Also when a later claim failed: what was claimed is run, not stranded.
            self._buffered(jobs)
        return jobs

    async def _claim_limited(self, want: int, jobs: list[Job], *, drain: bool) -> None:
        # A claimed job of a limited type counts against its limit while it waits in the
        # buffer, so these are claimed for the free slots plus the prefetch (about 50 ms
        # of work at the handlers' speed, none for slow handlers), not counting slots
        # promised to limited jobs already waiting. Other prefetched jobs run in
        # priority order with them (see _buffered).
        buffer = self._registry.buffer
        waiting = sum(1 for job, _ in buffer if job.job_type in self._limited)
        running = len(self._registry.running)
        free = self._concurrency + self.prefetch_target - running - waiting - len(jobs)
        now = time.monotonic()
        for job_type, handler in self._limited.items():
            if free <= 0 or want <= 0:
                return
            recheck_at = self._limited_recheck_at.get(job_type)
            if recheck_at is not None:
                if recheck_at > now:
                    continue  # the idle sleep (or drain) ends by then
                del self._limited_recheck_at[job_type]
            claimed, retry_in = await self._store.pickup_limited(
                self._worker_id, job_type, handler, min(free, want)
            )
            if retry_in is not None:
                # Its rate limit is used up with jobs due, or another worker holds its
                # claim lock: look again then (a duration: the clocks may differ).
                self._limited_recheck_at[job_type] = now + max(retry_in, 0.0)
            elif not claimed and not drain and self._registry.buffer:
                # A limited claim is a transaction of its own. While this worker is busy
                # with other jobs, a type that had nothing due is looked at a few times
                # a second, not at every claim. (An idle worker, or drain(), looks at
                # every type each time.)
                self._limited_recheck_at[job_type] = now + LIMITED_RECHECK_SECONDS
            jobs.extend(claimed)
            free -= len(claimed)
            want -= len(claimed)

    def _buffered(self, jobs: list[Job]) -> None:
        """Put claimed jobs in the buffer for the slots."""
        if not jobs:
            return
        registry = self._registry
        registry.hold(jobs)
        claimed_at = time.monotonic()
        if self._limited and any(job.job_type in self._limited for job in jobs):
            # Jobs of limited types hold a slot of their limit from their claim: run
            # everything in priority order, so they wait behind no job of lower priority.
            merged = [*registry.buffer, *((job, claimed_at) for job in jobs)]
            merged.sort(key=lambda entry: (-entry[0].priority, entry[0].run_after, entry[0].id))
            registry.buffer = deque(merged)
        else:
            registry.buffer.extend((job, claimed_at) for job in jobs)
        registry.job_ready.set()

    async def _idle_sleep(self, idle_polls: int) -> None:
        """Sleep per the idle policy, but no later than the next known due time."""
        seconds = self._settings.idle_policy.next_sleep(idle_polls)
        now = time.time()
        while self._due_at and self._due_at[0] <= now:
            heapq.heappop(self._due_at)
        if self._due_at:
            seconds = min(seconds, self._due_at[0] - now)
        if self._limited_recheck_at:
            # A limited type skipped in the last claim is looked at when its pause ends
            # (a pause already over is dropped: the next claim looks at that type).
            monotonic = time.monotonic()
            self._limited_recheck_at = {
                t: at for t, at in self._limited_recheck_at.items() if at > monotonic
            }
            if self._limited_recheck_at:
                soonest = min(self._limited_recheck_at.values()) - monotonic
                seconds = min(seconds, soonest)
        with suppress(TimeoutError):
            await asyncio.wait_for(self.wakeup.wait(), timeout=max(seconds, 0.0))

    def due_times(self) -> list[float]:
        """The due times (epoch seconds) this worker means to look again at."""
        return list(self._due_at)

    def expect_due(self, epoch: float) -> None:
        """A job comes due at ``epoch`` (seconds): be looking for it by then."""
        heapq.heappush(self._due_at, epoch)
        if len(self._due_at) > MAX_DUE_TIMES:
            self._due_at = heapq.nsmallest(MAX_DUE_TIMES // 2, self._due_at)
        self.wakeup.set()  # the idle sleep recomputes its deadline

    def room_freed(self, job_type: str) -> None:
        """A job of limited ``job_type`` finished here: look for more of it at once."""
        self._limited_recheck_at.pop(job_type, None)
        self.wakeup.set()
        self.want_more.set()
