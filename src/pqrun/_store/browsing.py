"""Reads behind the dashboard's job list beyond ``browse_jobs``: where a time range
starts in the primary key, the jobs due later, the jobs a bulk action would act on.

Each reads a bounded number of index entries however big the table (the statements in
``sql/browsing.sql`` say how many), as every page of the dashboard must.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pqrun.limits import check_int

from .interventions import bulk_ids
from .queries import query
from .rows import status_filter

if TYPE_CHECKING:
    from .connections import StoreConnections

FIRST_ID_CREATED_SINCE = query("first_id_created_since")
SCHEDULED_JOBS = query("scheduled_jobs")
JOBS_BY_IDS = query("jobs_by_ids")
BULK_CANDIDATES = query("bulk_candidates")


class BrowsingMethods:
    """PgJobStore's reads for the dashboard's job list: time ranges, scheduled jobs,
    and the jobs a bulk action names."""

    _db: StoreConnections

    async def first_id_created_since(
        self, moment: datetime | None = None, *, ago: timedelta | None = None
    ) -> int:
        """The lowest id of the jobs created at or after ``moment`` (or ``ago`` before
        the database's now), or the newest id + 1 when none was: a binary search of the
        primary key (ids grow with ``created_at``), some 20 index probes at a million
        rows. The jobs created in [a, b) are those with ids in
        [first_id_created_since(a), first_id_created_since(b))."""
        if (moment is None) == (ago is None):
            raise ValueError("first_id_created_since() needs a moment or ago=, not both")
        first: int = await self._db.fetchval(FIRST_ID_CREATED_SINCE, moment, ago)
        return first

    async def scheduled_jobs(
        self,
        *,
        job_type: str | None = None,
        after: tuple[datetime, int] | None = None,
        window: int = 10_000,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """READY jobs due later, soonest first (by ``run_after``, then id), after the
        cursor ``after`` (the ``run_after`` and id of the last one shown).

        Reads the pickup index once per priority (up to 100 priorities); with
        ``job_type``, at most ``window`` entries of each, so a rare type on a big
        backlog may be missed past them (look on from the last one's cursor).
        """
        check_int("window", window, 1)
        check_int("limit", limit, 1)
        run_after, after_id = after if after is not None else (None, None)
        rows = await self._db.fetch(
            SCHEDULED_JOBS,
            job_type,
            run_after,
            after_id,
            window if job_type is not None else limit,
            limit,
        )
        return [dict(row) for row in rows]

    async def jobs_by_ids(self, job_ids: Iterable[int]) -> list[dict[str, Any]]:
        """The jobs with these ids that exist, newest first, as a list shows them, with
        ``scheduled`` (READY and due later)."""
        rows = await self._db.fetch(JOBS_BY_IDS, bulk_ids(job_ids))
        return [dict(row) for row in rows]

    async def bulk_candidates(
        self,
        statuses: Sequence[str],
        *,
        job_type: str | None = None,
        ids: tuple[int, int] = (0, 2**63 - 1),
        scan: int = 20_000,
        limit: int = 1_000,
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` jobs of ``statuses`` (and ``job_type``) with ids in
        [ids[0], ids[1]), newest first, among the first ``scan`` entries of each
        status's index (READY in pickup order, FAILED and CANCELLED newest finished
        first). Fewer than ``limit`` does not mean there are no more."""
        check_int("scan", scan, 1)
        check_int("limit", limit, 1)
        wanted = [status_filter(status) for status in statuses]
        rows = await self._db.fetch(BULK_CANDIDATES, wanted, scan, ids[0], ids[1], job_type, limit)
        return [dict(row) for row in rows]
