"""Moves people make: cancel a job, retry a finished one (or every FAILED one), run a
job due later now; one job at a time, or many in one statement (the dashboard's bulk
actions).

Nothing in pqrun makes these moves by itself: a job leaves FAILED or CANCELLED only by
an explicit retry.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import asyncpg

from pqrun.errors import JobConflict
from pqrun.limits import check_int

from .queries import query
from .session_settings import read_committed

if TYPE_CHECKING:
    from .connections import StoreConnections

CANCEL = query("cancel")
RETRY = query("retry")
FAILED_IDS = query("failed_ids")
ACTIVE_IDS = query("active_ids")
RETRY_MANY = query("retry_many")
CANCEL_MANY = query("cancel_many")
RUN_NOW = query("run_now")

#: At most this many ids in one bulk statement (retry_many, cancel_many, run_now_many).
BULK_IDS_LIMIT = 10_000
# retry_many leaves out the jobs whose dedupe_key an active job holds; one enqueued
# between that check and the UPDATE makes the statement fail, and the next try sees it.
RETRY_MANY_TRIES = 3


class InterventionMethods:
    """PgJobStore's cancel and retry (the app's, operators', the dashboard's)."""

    _db: StoreConnections

    async def cancel(self, job_id: int) -> bool:
        """READY or RUNNING -> CANCELLED. False if the job was not active (or not found).

        A RUNNING job's worker is told, and cancels the handler (an ``async`` one: a plain
        function in a thread runs to its end). Whatever the run answers is ignored.
        """
        return await self._move(CANCEL, job_id) is not None

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
        try:
            row = await self._move(RETRY, job_id)
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

    async def retry_many(self, job_ids: Iterable[int]) -> list[int]:
        """``retry()`` these jobs in one statement: the FAILED or CANCELLED ones become
        READY, due now, with their attempts counted from zero. Returns the ids moved.

        A job in another state is left as it is (someone else moved it), as is one whose
        dedupe_key an active job holds, or an older job of ``job_ids`` retried now.
        """
        ids = bulk_ids(job_ids)
        for attempt in range(RETRY_MANY_TRIES):
            try:
                rows = await self._move(RETRY_MANY, ids)
            except asyncpg.UniqueViolationError as exc:
                if attempt + 1 < RETRY_MANY_TRIES:
                    continue
                raise JobConflict(
                    f"jobs {ids[:5]}... could not be retried: jobs with the same "
                    f"dedupe_key keep being enqueued ({exc.detail}); try again"
                ) from exc
            return sorted(row["id"] for row in rows)
        raise AssertionError("unreachable")

    async def cancel_many(self, job_ids: Iterable[int]) -> list[int]:
        """``cancel()`` these jobs in one statement: the READY or RUNNING ones become
        CANCELLED (the worker of a RUNNING one cancels its handler). Returns the ids
        moved; a job in another state is left as it is."""
        ids = bulk_ids(job_ids)
        return sorted(row["id"] for row in await self._move(CANCEL_MANY, ids))

    async def run_now(self, job_id: int) -> bool:
        """A READY job due later is due now (its ``run_after`` becomes the database's
        ``now()``); idle workers are woken. False if the job is not READY or already due
        (or not found)."""
        return bool(await self.run_now_many([job_id]))

    async def run_now_many(self, job_ids: Iterable[int]) -> list[int]:
        """``run_now()`` these jobs in one statement. Returns the ids moved; a job that
        is not READY, or already due, is left as it is."""
        ids = bulk_ids(job_ids)
        return sorted(row["id"] for row in await self._move(RUN_NOW, ids))

    async def _move(self, statement: str, ids: int | list[int]) -> Any:
        """One of these guarded moves of a job (``ids`` an id: its one value, or None) or of
        many (a list of ids: their rows), READ COMMITTED whatever the default isolation.
        The channel is read once connected: starting the store may learn it."""
        async with self._db.acquire() as conn:
            timeout = self._db.statement_timeout
            run = conn.fetch if isinstance(ids, list) else conn.fetchval
            return await read_committed(
                self._db, conn, lambda: run(statement, ids, self._db.channel, timeout=timeout)
            )


def bulk_ids(job_ids: Iterable[int]) -> list[int]:
    """The distinct ids of a bulk move, checked: at most BULK_IDS_LIMIT of them."""
    ids = sorted(set(job_ids))
    for job_id in ids:
        if isinstance(job_id, bool) or not isinstance(job_id, int) or not 0 < job_id < 2**63:
            raise ValueError(f"a job id is a whole number from 1 to 2**63 - 1, got {job_id!r}")
    if len(ids) > BULK_IDS_LIMIT:
        raise ValueError(
            f"{len(ids):,} job ids in one bulk move; at most {BULK_IDS_LIMIT:,}: split them"
        )
    return ids
