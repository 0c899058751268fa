"""The registry of live workers (job_workers): heartbeats, and the claims they list.

A worker's heartbeat writes its own row only, listing the claims it holds, and reads
which of them still own their job without locking job rows: nothing a handler or
another session holds can make it wait. The reaper reads the registry.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pqrun.errors import WorkerIdInUse
from pqrun.models import Job

from .queries import query
from .rows import claim_ids

if TYPE_CHECKING:
    from .connections import Connection, StoreConnections

HEARTBEAT = query("heartbeat")
WORKER_ROW = query("worker_row")
STILL_OWNED = query("still_owned")
LEAVE = query("leave")
LIST_WORKERS = query("list_workers")
WAKE_ROSTER = query("wake_roster")

# Heartbeats a worker sends within one stale period (default_stale_after).
HEARTBEATS_PER_STALE_PERIOD = 6


def heartbeat_gap(stale_after: timedelta) -> timedelta:
    """Two heartbeat intervals: heartbeats further apart than this break a streak."""
    return stale_after * 2 / HEARTBEATS_PER_STALE_PERIOD


class RegistryMethods:
    """PgJobStore's side of the worker registry (the worker's liveness, operators' list)."""

    _db: StoreConnections

    async def heartbeat(
        self,
        worker_id: str,
        jobs: Sequence[Job],
        *,
        job_types: Sequence[str] = (),
        concurrency: int = 1,
        conn: Connection | None = None,
        within: float | None = None,
        instance: str | None = None,
        stale_after: timedelta = timedelta(seconds=30),
        wake_capacity: int = 0,
        started: Sequence[int] = (),
    ) -> set[int]:
        """Register ``worker_id`` (or renew it) as alive and holding the claims of ``jobs``.

        While these heartbeats go on, the reaper leaves those jobs alone. Writes only
        the worker's row in ``job_workers``: it never waits for a lock on a job. Returns
        the ids of the jobs that are still this worker's claims (a missing one was
        cancelled or taken back). ``conn``: a connection of the caller's (a worker uses
        one of its own). ``instance``: a token of the running worker; while a worker
        with the same ``worker_id`` and another token has sent a heartbeat within
        ``stale_after``, this raises WorkerIdInUse. ``wake_capacity``: how many jobs a
        notification of inserted jobs may count on this worker for (one claim of it:
        slots and prefetch); 0 while it does not hear notifications. ``started``: the ids
        of the held jobs whose handler has started (the others wait for a slot).
        """
        claims = await self.heartbeat_claims(
            worker_id,
            jobs,
            job_types=job_types,
            concurrency=concurrency,
            conn=conn,
            within=within,
            instance=instance,
            stale_after=stale_after,
            wake_capacity=wake_capacity,
            started=started,
        )
        return {job_id for job_id, _lease in claims}

    async def heartbeat_claims(
        self,
        worker_id: str,
        jobs: Sequence[Job],
        *,
        job_types: Sequence[str],
        concurrency: int,
        conn: Connection | None,
        within: float | None,
        instance: str | None = None,
        stale_after: timedelta = timedelta(seconds=30),
        wake_capacity: int = 0,
        started: Sequence[int] = (),
    ) -> set[tuple[int, int | None]]:
        """heartbeat(), answering with the (id, lease_id) of the claims still owned."""
        ids, leases = claim_ids(jobs)
        async with self._db.acquire(conn) as c:
            rows = await c.fetch(
                HEARTBEAT,
                worker_id,
                socket.gethostname(),
                os.getpid(),
                list(job_types),
                concurrency,
                ids,
                leases,
                instance,
                stale_after,
                heartbeat_gap(stale_after),
                wake_capacity,
                list(started),
                timeout=self._db.statement_timeout if within is None else within,
            )
            if not rows[0]["registered"]:
                other = await c.fetchrow(WORKER_ROW, worker_id, timeout=self._db.statement_timeout)
                raise WorkerIdInUse(
                    f"worker_id {worker_id!r} is in use by another live worker"
                    + (
                        f" (host {other['host']!r}, pid {other['pid']}, started "
                        f"{other['started_at']:%Y-%m-%d %H:%M:%S %Z})"
                        if other is not None
                        else ""
                    )
                    + ": give each worker its own worker_id (Worker(worker_id=...), "
                    "`pqrun worker --worker-id`), or leave it to the default"
                )
        return {(row["id"], row["lease_id"]) for row in rows if row["id"] is not None}

    async def still_owned(
        self,
        worker_id: str,
        jobs: Sequence[Job],
        *,
        conn: Connection | None = None,
        within: float | None = None,
    ) -> set[tuple[int, int | None]]:
        """The (id, lease_id) of those ``jobs`` whose claim still owns the job.

        A read without locks: it never waits for a session that holds a job's row.
        """
        if not jobs:
            return set()
        ids, leases = claim_ids(jobs)
        async with self._db.acquire(conn) as c:
            rows = await c.fetch(
                STILL_OWNED,
                worker_id,
                ids,
                leases,
                timeout=self._db.statement_timeout if within is None else within,
            )
        return {(row["id"], row["lease_id"]) for row in rows}

    async def leave(self, worker_id: str, *, instance: str | None = None) -> None:
        """Take ``worker_id`` (the one whose heartbeats carried ``instance``) off the
        registry of live workers."""
        async with self._db.acquire() as conn:
            await conn.execute(
                LEAVE, worker_id, instance, self._db.channel, timeout=self._db.statement_timeout
            )

    async def wake_roster(
        self,
        default_stale_after: timedelta = timedelta(seconds=30),
        *,
        conn: Connection | None = None,
        within: float | None = None,
    ) -> list[tuple[str, list[str], int]]:
        """The live workers (worker_id, job types, wake capacity) that a notification of
        inserted jobs may name: those that listen, with a heartbeat within two of their
        intervals.

        A worker's listener reads it every few seconds to know whose turn a
        notification is (``default_stale_after``: for a worker that did not record its
        own stale period).
        """
        async with self._db.acquire(conn) as c:
            rows = await c.fetch(
                WAKE_ROSTER,
                default_stale_after,
                2 / HEARTBEATS_PER_STALE_PERIOD,
                timeout=self._db.statement_timeout if within is None else within,
            )
        return [(row["worker_id"], list(row["job_types"]), row["wake_capacity"]) for row in rows]

    async def list_workers(self) -> list[dict[str, Any]]:
        """The registered workers: id, host, pid, job types, concurrency, started, heartbeat."""
        rows = await self._db.fetch(LIST_WORKERS)
        return [dict(row) for row in rows]
