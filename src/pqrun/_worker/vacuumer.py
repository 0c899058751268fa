"""The vacuumer: keeps the jobs table and its pickup index clear of dead entries.

Every claim leaves a dead entry in the pickup index, and each later claim steps over all
of them until a VACUUM removes them: without one, claims slow down in proportion to the
jobs run since the last (issue 13 measured 13.5k jobs/s falling to 4.2k in 150 s with
autovacuum off). Autovacuum wakes once a minute by default, by when a busy queue has
left a million, and on a big table of kept results it skips the indexes (fewer than 2%
of the table's pages hold dead rows), so the pickup index's dead entries stay. So each
running worker reads the table's statistics every second, and once VACUUM_AFTER_CHANGES
rows were updated or deleted since the last vacuum run by hand, it runs one that
cleans the indexes. (A count of changes, not of dead rows: autovacuum resets that one
even when it skipped the indexes, and rows an open transaction still sees stay counted
dead however often they are vacuumed.)

A vacuum's cost grows with the table (kept results make it big: its indexes are read
whole each time), while the claims' cost grows with the dead entries. So a worker waits
VACUUM_GAP_FACTOR times as long as its own last vacuum took since the table's last
vacuum run by hand (by any worker): the table is vacuumed about a tenth of the time at
most, however big it is and however many workers share it. A vacuum already running (autovacuum's,
another worker's) makes the others skip their turn, and a vacuum gives way at once to
DDL or TRUNCATE waiting for the table (store.vacuum).

It also gathers the planner's statistics when the table has none and holds rows (a new
queue, with autovacuum off or before its first round): without them the planner takes
READY jobs for rare, and a claim among a backlog of them sorts them all (97 ms for 500 of
200,000) instead of walking the pickup index (5 ms). Statistics gathered once are enough
(stale ones still lead to the index walk): once they are there, a worker stops looking.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg

from pqrun.errors import NotPermitted

from .loops import Lifetime, first_of
from .settings import WorkerSettings
from .store_protocol import WorkerStore

logger = logging.getLogger("pqrun")

# Rows updated or deleted since the last vacuum by hand (two per job: its claim and its
# completion) that start a vacuum.
VACUUM_AFTER_CHANGES = 50_000
# Seconds between looks at the table's statistics.
VACUUM_CHECK_INTERVAL = 1.0
# The least time between two vacuums by hand, as a multiple of the last one's length;
# until this worker has vacuumed once, VACUUM_FIRST_GAP seconds.
VACUUM_GAP_FACTOR = 9.0
VACUUM_FIRST_GAP = 5.0
# Seconds between two looks for the statistics of a table that has none yet. While it
# is empty, always this; after an ANALYZE that left none (a vacuum or another ANALYZE
# held the table, it failed, or the column is set to gather none), twice as long each
# time, up to the cap.
ANALYZE_RETRY_AFTER = 5.0
ANALYZE_RETRY_MAX = 300.0
# Seconds to wait after a failed look or vacuum (an outage is the fetcher's to back off
# from and to report; this loop only waits its turn).
VACUUM_RETRY_AFTER = 10.0


class Vacuumer:
    def __init__(self, settings: WorkerSettings, store: WorkerStore, life: Lifetime) -> None:
        self._settings = settings
        self._store = store
        self._life = life
        self._gap = VACUUM_FIRST_GAP  # the least seconds between vacuums
        self._vacuums: int | None = None  # vacuums by hand seen so far
        self._changes_then = 0  # the table's changes when the last of them ended
        self._refused: str | None = None  # the last refusal logged (once each)
        self._has_statistics = False  # once they are there, a worker no longer looks
        self._statistics_look_at = 0.0  # monotonic time of the next look for them
        self._statistics_gap = ANALYZE_RETRY_AFTER

    async def run(self) -> None:
        await self._life.repeat(
            "vacuumer", "vacuuming the jobs table", self._step, after_error=VACUUM_RETRY_AFTER
        )

    async def _step(self) -> float | None:
        try:
            return await self._look_and_vacuum()
        except NotPermitted as exc:
            logger.warning("worker %s does not vacuum: %s", self._settings.worker_id, exc)
            return None  # for good: the role will not change while it runs
        except asyncpg.PostgresError as exc:
            # Refused by the server (not a lost connection, which goes to the outage log):
            # said once, tried again later; the queue works on meanwhile.
            text = f"{type(exc).__name__}: {exc}"
            if text != self._refused:
                self._refused = text
                logger.warning(
                    "worker %s could not vacuum the jobs table (%s); it tries again every "
                    "%.0f s. Autovacuum can keep it instead (docs/operations.md)",
                    self._settings.worker_id,
                    text,
                    VACUUM_RETRY_AFTER,
                )
            return VACUUM_RETRY_AFTER

    async def _gather_statistics(self) -> None:
        """ANALYZE a table that holds rows but has no statistics. Its own failures are
        not the vacuum's: they are logged and the vacuum's turn comes all the same. A role
        that may not is told once, and leaves it to autovacuum."""
        if self._has_statistics or time.monotonic() < self._statistics_look_at:
            return
        has: bool | None = False
        try:
            has = await self._store.analyze(if_missing=True)
        except NotPermitted as exc:
            self._has_statistics = True  # not for this role: never again in this run
            logger.info(
                "worker %s does not gather the jobs table's statistics (autovacuum "
                "does, where it runs): %s",
                self._settings.worker_id, exc,
            )  # fmt: skip
            return
        except Exception as exc:
            logger.debug(
                "worker %s could not analyze the jobs table: %s: %s",
                self._settings.worker_id, type(exc).__name__, exc,
            )  # fmt: skip
        if has:
            self._has_statistics = True
        elif has is None:  # empty: look again soon, a backlog may come any time
            self._statistics_look_at = time.monotonic() + ANALYZE_RETRY_AFTER
        else:
            self._statistics_look_at = time.monotonic() + self._statistics_gap
            self._statistics_gap = min(self._statistics_gap * 2, ANALYZE_RETRY_MAX)

    async def _look_and_vacuum(self) -> float:
        await self._gather_statistics()
        stats = await self._store.vacuum_stats()
        if self._vacuums is None:
            # Started now: count the dead rows already there as changes since a vacuum.
            self._changes_then = stats.changes - stats.dead_rows
        elif stats.vacuums != self._vacuums or stats.changes < self._changes_then:
            self._changes_then = stats.changes  # vacuumed (or statistics reset) since
        self._vacuums = stats.vacuums
        since = stats.seconds_since_vacuum
        if (
            stats.vacuuming
            or stats.changes - self._changes_then < VACUUM_AFTER_CHANGES
            or (since is not None and since < self._gap)
        ):
            return VACUUM_CHECK_INTERVAL
        began = time.monotonic()
        vacuum = asyncio.ensure_future(self._store.vacuum(min_seconds_between=self._gap))
        stopping = asyncio.ensure_future(first_of(self._life.stopping))
        try:
            await asyncio.wait({vacuum, stopping}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # this loop was cancelled: the vacuum goes with it
            vacuum.cancel()
            raise
        finally:
            stopping.cancel()
        if not vacuum.done():  # the worker stops: so does the vacuum (which loses nothing)
            vacuum.cancel()
            await asyncio.wait({vacuum})
            return VACUUM_CHECK_INTERVAL
        if not vacuum.result():
            # It gave way to DDL, or another vacuum held the table (one this role cannot
            # see in pg_stat_progress_vacuum): not again at once.
            return max(VACUUM_CHECK_INTERVAL, VACUUM_FIRST_GAP)
        took = time.monotonic() - began
        self._gap = took * VACUUM_GAP_FACTOR
        self._refused = None
        logger.debug("worker %s vacuumed the jobs table in %.2f s", self._settings.worker_id, took)
        return VACUUM_CHECK_INTERVAL


async def gather_missing_statistics(settings: WorkerSettings, store: WorkerStore) -> None:
    """For drain(), which runs no vacuumer: gather the jobs table's statistics first if it
    holds rows but has none, so that its claims walk the pickup index. Otherwise it costs
    one look; a failure, or a role that may not analyze, leaves the table as it is."""
    if not settings.enable_vacuum:
        return
    try:
        await store.analyze(if_missing=True)
    except Exception as exc:  # best effort: a real outage is the first claim's to report
        logger.debug("drain() runs without the jobs table's statistics: %s", exc)
