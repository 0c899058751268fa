"""The reaper: takes back the jobs of workers whose heartbeats went stale.

Any worker may run it; the store lets one reap at a time. It reaps only once some
worker's heartbeats have reached the database for a while without a gap, so that after
an outage (when every heartbeat is stale at once) only the jobs of the dead go back.
"""

from __future__ import annotations

from .loops import Lifetime
from .settings import WorkerSettings
from .store_protocol import WorkerStore

# The reaper takes jobs back only once some worker's heartbeats (its own or another's)
# have reached the database for this many heartbeat intervals without a gap. After an
# outage every heartbeat is stale at once; by then every worker that is alive has sent
# one again (their heartbeat connections retry every interval), so only the jobs of the
# dead are taken back. Any worker will do as the witness, so a worker that has just
# started can reap at once: workers that restart often still recover their dead.
REAP_AFTER_HEARTBEATS = 3


class Reaper:
    def __init__(self, settings: WorkerSettings, store: WorkerStore, life: Lifetime) -> None:
        self._settings = settings
        self._store = store
        self._life = life

    async def run(self) -> None:
        # No backoff after an error: the reap interval is the wait.
        interval = self._settings.reap_interval.total_seconds()
        await self._life.repeat("reaper", "reaping stale jobs", self._step, after_error=interval)

    async def _step(self) -> float:
        settings = self._settings
        await self._store.reap_stale(
            settings.default_stale_after,
            reachable_for=settings.heartbeat_interval * REAP_AFTER_HEARTBEATS,
        )
        return settings.reap_interval.total_seconds()
