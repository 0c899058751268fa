"""Moves people make: cancel a job, retry a finished one (or every FAILED one).

Nothing in pqrun makes these moves by itself: a job leaves FAILED or CANCELLED only by
an explicit retry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncpg

from pqrun.errors import JobConflict
from pqrun.limits import check_int

from .queries import query

if TYPE_CHECKING:
    from .connections import StoreConnections

CANCEL = query("cancel")
RETRY = query("retry")
FAILED_IDS = query("failed_ids")
ACTIVE_IDS = query("active_ids")


class InterventionMethods:
    """PgJobStore's cancel and retry (the app's, operators', the dashboard's)."""

    _db: StoreConnections

    async def cancel(self, job_id: int) -> bool:
        """READY or RUNNING -> CANCELLED. False if the job was not active (or not found).

        A RUNNING job's worker is told, and cancels the handler (an ``async`` one: a plain
        function in a thread runs to its end). Whatever the run answers is ignored.
        """
        # The channel is read once connected: starting the store may learn it.
        async with self._db.acquire() as conn:
            row = await conn.fetchval(
                CANCEL, job_id, self._db.channel, timeout=self._db.statement_timeout
            )
        return row is not None

    async def cancel_type(self, job_type: str) -> list[int]:
        """``cancel()`` every READY or RUNNING job of ``job_type``, oldest first; the
        ids cancelled. Jobs enqueued meanwhile may be cancelled too."""
        cancelled: list[int] = []
        after = 0
        while True:
            rows = await self._db.fetch(ACTIVE_IDS, job_type, after, 1000)
            if not rows:
                return cancelled
            for row in rows:
                if await self.cancel(row["id"]):
                    cancelled.append(row["id"])
            after = rows[-1]["id"]

    async def retry(self, job_id: int) -> bool:
        """FAILED or CANCELLED -> READY, due now, with its attempts counted from zero.

        False if the job is in another state (or not found). Raises JobConflict when an
        active job holds the same dedupe_key.
        """
        async with self._db.acquire() as conn:
            try:
                row = await conn.fetchval(
                    RETRY, job_id, self._db.channel, timeout=self._db.statement_timeout
                )
            except asyncpg.UniqueViolationError as exc:
                raise JobConflict(
                    f"job {job_id} cannot be retried while another job with the same "
                    f"dedupe_key is READY or RUNNING ({exc.detail}); cancel that job or "
                    "let it finish first"
                ) from exc
        return row is not None

    async def retry_failed(
        self, job_type: str | None = None, limit: int | None = None
    ) -> tuple[list[int], list[int]]:
        """``retry()`` every FAILED job (of ``job_type``, or of any type), oldest first;
        at most ``limit`` of them if given.

        Returns (ids retried, ids left FAILED because an active job holds their
        dedupe_key).
        """
        if limit is not None:
            check_int("limit", limit, 1)
        retried: list[int] = []
        conflicts: list[int] = []
        after = 0
        while limit is None or len(retried) < limit:
            rows = await self._db.fetch(FAILED_IDS, job_type, after, 1000)
            if not rows:
                return retried, conflicts
            for row in rows:
                if limit is not None and len(retried) >= limit:
                    break
                try:
                    if await self.retry(row["id"]):
                        retried.append(row["id"])
                except JobConflict:
                    conflicts.append(row["id"])
            after = rows[-1]["id"]
        return retried, conflicts
