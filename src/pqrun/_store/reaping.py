"""The reaper: RUNNING jobs whose claim no live worker lists go back to READY (or FAILED).

One reaper acts at a time per queue (REAPER_LOCK). A row that refuses the move (a
trigger of yours, a check constraint) is skipped: the others are reaped one by one.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import asyncpg

from pqrun.models import JobStatus

from .queries import query
from .registry import heartbeat_gap
from .session_settings import own_transaction

if TYPE_CHECKING:
    from .connections import Connection, StoreConnections

logger = logging.getLogger("pqrun")

REAPER_LOCK = query("reaper_lock")
REAP_STALE = query("reap_stale")
REAP_CANDIDATES = query("reap_candidates")
FORGET_DEAD_WORKERS = query("forget_dead_workers")

# Errors of a reap that one row's data or a rule about it can cause (data exceptions,
# integrity and check constraints, triggers raising): reaped one by one, the other rows
# go on. Any other error (permissions, a missing column, the server) is everyone's.
REAP_ROW_REFUSALS = ("22", "23", "27", "44", "P0")


class ReapingMethods:
    """PgJobStore's reaper (a worker's reaper loop, or an operator's call)."""

    _db: StoreConnections

    async def reap_stale(
        self,
        default_stale_after: timedelta = timedelta(seconds=30),
        *,
        reachable_for: timedelta | None = None,
    ) -> list[tuple[int, JobStatus]]:
        """Take back RUNNING jobs that gave no sign of life for ``default_stale_after``.

        A worker's heartbeat lists the claims it holds every few seconds; a job whose
        claim is older than ``default_stale_after`` and that no heartbeat of that age
        lists is taken back: to READY when attempts are left, else to FAILED. So are
        RUNNING rows with no owner. Workers whose heartbeat is that old are removed from
        the registry. With ``reachable_for``, nothing is taken back unless the workers'
        heartbeats, together, have reached the database all through that long (workers
        pass three heartbeat intervals: after an outage, every live worker has sent one
        again by then). One
        reaper acts at a time: while another holds the queue's reaper lock this returns
        [] at once. Returns (id, new status) for each job taken back.
        """
        async with self._db.acquire() as conn, own_transaction(conn):
            if not await conn.fetchval(
                REAPER_LOCK, self._db.channel, timeout=self._db.statement_timeout
            ):
                return []
            try:
                async with conn.transaction():  # a savepoint
                    rows = await conn.fetch(
                        REAP_STALE,
                        default_stale_after,
                        reachable_for,
                        heartbeat_gap(default_stale_after),
                        None,
                        timeout=self._db.statement_timeout,
                    )
            except asyncpg.PostgresError as exc:
                if not (exc.sqlstate or "").startswith(REAP_ROW_REFUSALS):
                    raise
                # One row refused the move (a trigger of yours, say): reap the others one
                # by one, so that one bad row cannot keep every dead worker's jobs.
                rows = await reap_one_by_one(self._db, conn, default_stale_after, reachable_for)
            gone = await conn.fetch(
                FORGET_DEAD_WORKERS, default_stale_after, timeout=self._db.statement_timeout
            )
        for worker in gone:
            logger.warning(
                "worker %s gave no heartbeat for %s: removed from the registry",
                worker["worker_id"],
                default_stale_after,
            )
        for row in rows:
            logger.warning(
                "reaped job %s: attempt %s by %s gave no heartbeat; now %s",
                row["id"],
                row["attempts"],
                row["locked_by"],
                row["status"],
                extra={
                    "job_id": row["id"],
                    "job_type": row["job_type"],
                    "attempt": row["attempts"],
                    "outcome": "reaped",
                },
            )
        return [(row["id"], JobStatus(row["status"])) for row in rows]


async def reap_one_by_one(
    db: StoreConnections, conn: Connection, stale_after: timedelta, reachable_for: timedelta | None
) -> list[Any]:
    """REAP_STALE for each candidate in a savepoint of its own; a refused row is logged."""
    candidates = await conn.fetch(REAP_CANDIDATES, stale_after, timeout=db.statement_timeout)
    rows: list[Any] = []
    for candidate in candidates:
        try:
            async with conn.transaction():
                rows += await conn.fetch(
                    REAP_STALE,
                    stale_after,
                    reachable_for,
                    heartbeat_gap(stale_after),
                    candidate["id"],
                    timeout=db.statement_timeout,
                )
        except asyncpg.PostgresError as exc:
            if not (exc.sqlstate or "").startswith(REAP_ROW_REFUSALS):
                raise
            logger.error(
                "the reaper cannot take back job %s: the database refuses the move "
                "(%s: %s); it stays RUNNING until the refusal is lifted",
                candidate["id"],
                type(exc).__name__,
                str(exc).split("\n", 1)[0][:300],
                extra={"job_id": candidate["id"]},
            )
    return rows
