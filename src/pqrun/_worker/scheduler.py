"""The scheduler: declares this worker's schedules and enqueues each tick when it is due."""

from __future__ import annotations

import logging
import time

from pqrun.store import PgJobStore

from .loops import Lifetime
from .settings import WorkerSettings

logger = logging.getLogger("pqrun")

# The schedule loop sleeps until the next tick, within these bounds (seconds): the upper
# one lets it see schedules that other workers declared or moved.
SCHEDULE_MIN_SLEEP = 0.05
SCHEDULE_MAX_SLEEP = 30.0
# A worker writes its schedules' definitions when it starts and again this often (s).
SCHEDULE_REDECLARE_EVERY = 300.0


class Scheduler:
    def __init__(self, settings: WorkerSettings, store: PgJobStore, life: Lifetime) -> None:
        self._settings = settings
        self._store = store
        self._life = life

    async def run(self) -> None:
        """Declare this worker's schedules, then enqueue each tick when it comes due."""
        schedules = list(self._settings.schedules)
        errors = self._life.streak("schedules")
        declared_at: float | None = None
        while not self._life.stopping.is_set():
            try:
                now = time.monotonic()
                if declared_at is None or now - declared_at >= SCHEDULE_REDECLARE_EVERY:
                    # Again now and then: declared_at tells which schedules some running
                    # worker still declares, and a removed row comes back.
                    await self._store.declare_schedules(schedules)
                    declared_at = now
                fired, until_next = await self._store.fire_due_schedules(schedules)
            except Exception as exc:
                errors.failed("firing schedules", exc)
                await self._life.sleep(errors.wait())
                continue
            errors.succeeded()
            if fired:
                logger.debug(
                    "worker %s enqueued scheduled jobs %s", self._settings.worker_id, fired
                )
            # A due schedule another worker holds locked is fired by it: look again soon.
            await self._life.sleep(min(max(until_next, SCHEDULE_MIN_SLEEP), SCHEDULE_MAX_SLEEP))
