"""The pruner: deletes finished jobs past their retention, a few small batches at a time."""

from __future__ import annotations

import logging

import asyncpg

from .loops import Lifetime
from .settings import WorkerSettings
from .store_protocol import WorkerStore

logger = logging.getLogger("pqrun")

# Pruning deletes at most this many rows per transaction, this many transactions per
# step, and pauses this long (seconds) between steps while a backlog lasts.
PRUNE_BATCH_SIZE = 1000
PRUNE_BATCHES_PER_STEP = 10
PRUNE_PAUSE = 0.5


class Pruner:
    def __init__(self, settings: WorkerSettings, store: WorkerStore, life: Lifetime) -> None:
        self._settings = settings
        self._store = store
        self._life = life

    async def run(self) -> None:
        """Delete old finished jobs every prune interval, a few small batches at a time."""
        # No backoff after an error: the prune interval is the wait.
        interval = self._settings.prune_interval.total_seconds()
        await self._life.repeat("pruner", "deleting old jobs", self._step, after_error=interval)

    async def _step(self) -> float | None:
        settings = self._settings
        try:
            pruned = await self._store.prune(
                settings.keep_done,
                settings.keep_failed,
                batch_size=PRUNE_BATCH_SIZE,
                max_batches=PRUNE_BATCHES_PER_STEP,
            )
        except asyncpg.InsufficientPrivilegeError as exc:
            logger.error(
                "worker %s cannot delete old jobs (%s); finished jobs are kept. GRANT "
                "DELETE ON jobs to this role, or set WORKER_PRUNE_ENABLED=false and "
                "prune with `pqrun prune` as a role that may",
                settings.worker_id,
                exc,
            )
            return None  # for good: retrying would only repeat this
        if pruned.total:
            logger.info(
                "worker %s pruned %d DONE, %d FAILED, %d CANCELLED jobs",
                settings.worker_id,
                pruned.done,
                pruned.failed,
                pruned.cancelled,
            )
        # A backlog goes in steps with pauses, so pruning never crowds out the work.
        return PRUNE_PAUSE if pruned.more else settings.prune_interval.total_seconds()
