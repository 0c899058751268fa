"""The vacuumer: keeps the jobs table and its pickup index clear of dead entries.

Every claim leaves a dead entry in the pickup index, and each later claim steps over all
of them until a VACUUM removes them: without one, claims slow down in proportion to the
jobs run since the last (issue 13 measured 13.4k jobs/s falling to 4.2k in 150 s with
autovacuum off). Autovacuum wakes once a minute by default, by when a busy queue has
left a million. So each worker checks the table's dead rows every second and vacuums it
once they pass VACUUM_AFTER_DEAD_ROWS; a vacuum already running (another worker's, or
autovacuum's) makes it skip its turn.

A vacuum's cost grows with the table (kept results make it big: its indexes are read
whole each time), while the claims' cost grows with the dead entries. So vacuums are
spaced out by at least VACUUM_GAP_FACTOR times as long as this worker's last one took:
vacuuming takes at most about a tenth of one backend's time, however big the table.
"""

from __future__ import annotations

import logging
import time

from pqrun.store import PgJobStore

from .loops import Lifetime
from .settings import WorkerSettings

logger = logging.getLogger("pqrun")

# Dead row versions (two per job: its claim's and its completion's) that start a vacuum.
VACUUM_AFTER_DEAD_ROWS = 50_000
# Seconds between looks at the table's statistics.
VACUUM_CHECK_INTERVAL = 1.0
# The least time between two vacuums (by anyone), as a multiple of the last one's length.
VACUUM_GAP_FACTOR = 9.0
# Seconds to wait after a failed look or vacuum (an outage is the fetcher's to back off
# from and to report; this loop only waits its turn).
VACUUM_RETRY_AFTER = 10.0


class Vacuumer:
    def __init__(self, settings: WorkerSettings, store: PgJobStore, life: Lifetime) -> None:
        self._settings = settings
        self._store = store
        self._life = life
        self._gap = 0.0  # the least seconds between vacuums: learnt from the last one

    async def run(self) -> None:
        await self._life.repeat(
            "vacuumer", "vacuuming the jobs table", self._step, after_error=VACUUM_RETRY_AFTER
        )

    async def _step(self) -> float | None:
        began = time.monotonic()
        try:
            vacuumed = await self._store.vacuum(
                min_dead_rows=VACUUM_AFTER_DEAD_ROWS, min_seconds_between=self._gap
            )
        except PermissionError as exc:
            logger.warning("worker %s does not vacuum: %s", self._settings.worker_id, exc)
            return None  # for good: the role will not change while it runs
        if vacuumed:
            took = time.monotonic() - began
            self._gap = took * VACUUM_GAP_FACTOR
            logger.debug(
                "worker %s vacuumed the jobs table in %.2f s", self._settings.worker_id, took
            )
        return VACUUM_CHECK_INTERVAL
