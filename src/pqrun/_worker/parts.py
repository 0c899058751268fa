"""One run of a worker (a start-to-stop, or a drain): its components, wired together.

A ``Worker`` makes a new ``WorkerParts`` for each run, so that every event and task
belongs to the event loop of that run. The parts and who tells whom::

    Fetcher ──buffer──► Executor (slots) ──Outcome──► OutcomeWriter ──► written()
       ▲  ▲                                                              │
       │  └──── wake / due times ── Listener                             │
       └──────── room freed, retries due ◄───────────────────────────────┘
    Liveness (heartbeats) ── claims lost ──► RunRegistry.lose ── cancels runs
    Reaper, Pruner, Vacuumer, Scheduler, TypeStats: a step each, repeated by
    Lifetime.repeat; RoomAnnouncer. TypeStats also counts each written outcome.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from pqrun.models import Job, JobStatus

from .announcer import RoomAnnouncer
from .executor import Executor
from .fetcher import Fetcher
from .gauges import LIVE, SlotGauges
from .listener import Listener
from .liveness import Liveness
from .loops import Lifetime, OutageLog
from .outcome import Outcome, RunOutcome, report
from .outcome_writer import OutcomeWriter
from .pruner import Pruner
from .reaper import Reaper
from .runs import RunRegistry, release_jobs
from .scheduler import Scheduler
from .settings import WorkerSettings
from .store_protocol import WorkerStore
from .type_stats import TypeStats
from .vacuumer import Vacuumer, gather_missing_statistics
from .wake_turns import WakeRoster


class WorkerParts:
    """The components of one worker run; ``start_*`` start them, in this order:
    slots (with the outcome writer), heartbeats, then the background loops."""

    def __init__(
        self,
        settings: WorkerSettings,
        store: WorkerStore,
        outage: OutageLog,
        *,
        instance: str,
        on_task_end: Callable[[asyncio.Task[Any]], None],
    ) -> None:
        self.settings = settings
        self.store = store
        self.instance = instance
        self.life = life = Lifetime(settings.worker_id, outage, settings.loop_error_policy)
        life.on_end = on_task_end
        self.registry = registry = RunRegistry()
        # Outcomes whose write committed with a status (not found moot).
        self.processed = 0
        self.writer = OutcomeWriter(
            store,
            life.streak("writer"),
            on_written=self._written,
            delete_done=settings.delete_done,
        )
        self.type_stats = TypeStats(store, life)
        self.fetcher = fetcher = Fetcher(settings, store, registry, self.writer, life)
        self.liveness = Liveness(
            store,
            settings.worker_id,
            job_types=settings.job_types,
            concurrency=settings.concurrency,
            interval=settings.heartbeat_interval.total_seconds(),
            stale_after=settings.default_stale_after.total_seconds(),
            instance=instance,
            held=registry.held_jobs,
            on_lost=registry.lose,
            errors=life.streak("liveness"),
            wake_capacity=self._wake_capacity,
            started=registry.started_job_ids,
        )
        self.roster = WakeRoster(settings.worker_id, settings.job_types)
        self.listener = Listener(
            store,
            registry,
            life,
            wake=fetcher.wakeup.set,
            expect_due=fetcher.expect_due,
            check_soon=self.liveness.check_soon,
            roster=self.roster,
            claim_room=fetcher.claim_room,
            due_times=fetcher.due_times,
            roster_every=settings.heartbeat_interval.total_seconds(),
            default_stale_after=settings.default_stale_after,
            on_hearing=self.liveness.beat_soon,
        )
        self.announcer = RoomAnnouncer(store, life)
        self.executor = Executor(
            settings, store, registry, fetcher, self.writer, life, release=self.release
        )
        self.background: list[asyncio.Task[Any]] = []
        self.gauges = SlotGauges(
            store, settings.worker_id, settings.concurrency, settings.job_types, registry
        )

    @property
    def slots(self) -> list[asyncio.Task[None]]:
        return self.executor.slots

    def request_stop(self) -> None:
        """Ask every loop to stop, without waiting (safe from a signal handler)."""
        for event in (
            self.life.stopping,
            self.registry.job_ready,
            self.fetcher.want_more,
            self.fetcher.wakeup,
        ):
            event.set()

    def start_slots(self) -> None:
        self.writer.start(self.life.spawn)
        self.executor.start()
        LIVE.add(self.gauges)  # metrics read its slots from now until the run ends

    def ended(self) -> None:
        """The run is over (or its last handlers are on their own): no more gauges."""
        LIVE.discard(self.gauges)

    def start_heartbeats(self) -> None:
        self.liveness.start(self.life.spawn)

    async def start_drain(self) -> None:
        """drain()'s start: the table's statistics first if it has none (a drain runs no
        vacuumer to gather them), then the slots and the heartbeats."""
        await gather_missing_statistics(self.settings, self.store)
        self.start_slots()
        self.start_heartbeats()

    def start_loops(self) -> None:
        """The fetcher, the counts per type, and the reaper, pruner, vacuumer, listener and
        scheduler if enabled."""
        settings, spawn = self.settings, self.life.spawn
        self.background = [
            spawn("fetcher", self.fetcher.run(drain=False)),
            spawn("type-stats", self.type_stats.run()),
        ]
        if settings.enable_reaper:
            self.background.append(spawn("reaper", Reaper(settings, self.store, self.life).run()))
        if settings.enable_pruning:
            self.background.append(spawn("pruner", Pruner(settings, self.store, self.life).run()))
        if settings.enable_vacuum:
            vacuumer = Vacuumer(settings, self.store, self.life)
            self.background.append(spawn("vacuumer", vacuumer.run()))
        if settings.listen:
            self.background.append(spawn("listener", self.listener.run()))
        if settings.prefetch_limit and settings.listen:
            # (Only a listening worker reads the roster of the others that could help.)
            watch = self.executor.watch_buffer(self.roster.others_handle)
            self.background.append(spawn("buffer-watch", watch))
        if settings.schedules:
            scheduler = Scheduler(settings, self.store, self.life)
            self.background.append(spawn("scheduler", scheduler.run()))

    def _wake_capacity(self) -> int:
        """How many jobs a notification may count on this worker for: what one claim of
        it takes (slots and prefetch), or 0 while it does not hear notifications."""
        if not self.listener.hearing:
            return 0
        return self.settings.concurrency + self.fetcher.prefetch_target

    async def stop_heartbeats(self, within: float = 1.0) -> None:
        """Heartbeats go on through a shutdown's grace period; they end with it."""
        await self.liveness.stop(within)

    async def release(self, jobs: list[Job], why: str) -> None:
        await release_jobs(self.store, self.registry, self.settings.worker_id, jobs, why)

    def _written(self, outcome: Outcome, status: JobStatus | None) -> None:
        """Called by the outcome writer once an outcome is committed (or found moot)."""
        self.registry.outcomes_written += 1
        if status is not None:
            self.processed += 1
        job = outcome.job
        self.registry.drop(job)
        if status is JobStatus.READY and outcome.retry_after is not None:
            self.fetcher.expect_due(time.time() + outcome.retry_after.total_seconds())
        if status is not None and self.fetcher.is_limited(job.job_type):
            # Look for more here, and tell the other workers.
            self.fetcher.room_freed(job.job_type)
            self.announcer.room_freed()
        kind = RunOutcome.of(outcome, status)
        self.type_stats.record(job.job_type, kind, outcome.duration_ms)
        report(self.store.observers, self.settings.worker_id, outcome, kind)
