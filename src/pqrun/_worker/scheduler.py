"""The scheduler: declares this worker's schedules and enqueues each tick when it is due."""

from __future__ import annotations

import logging
import time

from .loops import Lifetime
from .settings import WorkerSettings
from .store_protocol import WorkerStore

logger = logging.getLogger("pqrun")

# The schedule loop sleeps until the next tick, within these bounds (seconds): the upper
# one lets it see schedules that other workers declared or moved.
SCHEDULE_MIN_SLEEP = 0.05
SCHEDULE_MAX_SLEEP = 30.0
# A worker writes its schedules' definitions when it starts and again this often (s).
SCHEDULE_REDECLARE_EVERY = 300.0


class Scheduler:
    def __init__(self, settings: WorkerSettings, store: WorkerStore, life: Lifetime) -> None:
        self._settings = settings
        self._store = store
        self._life = life
        # When this worker last wrote its schedules' definitions (monotonic).
        self._declared_at: float | None = None

    async def run(self) -> None:
        """Declare this worker's schedules, then enqueue each tick when it comes due."""
        await self._life.repeat("schedules", "firing schedules", self._step)

    async def _step(self) -> float:
        schedules = self._settings.schedules
        now = time.monotonic()
        if self._declared_at is None or now - self._declared_at >= SCHEDULE_REDECLARE_EVERY:
            # Again now and then: declared_at tells which schedules some running worker
            # still declares, and a removed row comes back.
            await self._store.declare_schedules(schedules)
            self._declared_at = now
        fired, until_next = await self._store.fire_due_schedules(schedules)
        if fired:
            logger.debug("worker %s enqueued scheduled jobs %s", self._settings.worker_id, fired)
        # A due schedule another worker holds locked is fired by it: look again soon.
        return min(max(until_next, SCHEDULE_MIN_SLEEP), SCHEDULE_MAX_SLEEP)
