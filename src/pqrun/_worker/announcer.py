"""The room announcer: tells other workers that a limited job type has room again.

Other workers would otherwise see the freed room only at their next idle poll. At most
one notification goes out per LIMITED_RECHECK_SECONDS: rooms freed meanwhile share the
next one, so a fast limited type does not cost a NOTIFY per batch.
"""

from __future__ import annotations

import asyncio
import logging

from .fetcher import LIMITED_RECHECK_SECONDS
from .loops import Lifetime, task_name
from .store_protocol import WorkerStore

logger = logging.getLogger("pqrun")


class RoomAnnouncer:
    def __init__(self, store: WorkerStore, life: Lifetime) -> None:
        self._store = store
        self._life = life
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def room_freed(self) -> None:
        if self._task is None or self._task.done():
            # Not watched: a failure to wake the others only makes them see it later.
            name = task_name(self._life.worker_id, "room-announcer")
            self._task = asyncio.create_task(self._announce(), name=name)
        else:
            self._again = True  # room freed after that one was sent

    def stop(self) -> None:
        """Other workers see freed room at their next poll; this one is gone."""
        if self._task is not None:
            self._task.cancel()

    async def _announce(self) -> None:
        while True:
            self._again = False
            try:
                await self._store.wake_workers()
            except Exception as exc:  # they will see it at their next poll
                logger.debug("could not wake other workers: %s", exc)
            await self._life.sleep(LIMITED_RECHECK_SECONDS)
            if not self._again or self._life.stopping.is_set():
                return
