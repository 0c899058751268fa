"""Liveness: a worker proving, every few seconds, that it is alive and which jobs it holds.

It runs on a connection of its own, outside the pool, and its statement (the heartbeat
query of the store) writes only the worker's row in ``job_workers``: a handler holding every
pooled connection, or a session holding a job's row locked, cannot hold it up. The reaper
leaves a RUNNING job alone while its worker's fresh heartbeat lists the job's claim.
When that connection cannot be opened (the server at its connection limit, say), the
heartbeat goes through the pool rather than not at all.

Each heartbeat also reads, without locks, which of the claims it lists still own their
job. A claim that no longer does was cancelled or taken back: the worker stops that run.
A ``cancel:<id>`` notification asks for the same read at once, for that job only; the
notification itself never stops anything (anyone who can connect can send one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import timedelta
from typing import Any

from pqrun._store.session_settings import READ_COMMITTED
from pqrun.errors import WorkerIdInUse
from pqrun.models import Job

from .loops import ErrorStreak, first_of
from .runs import Claim
from .store_protocol import WorkerStore

logger = logging.getLogger("pqrun")


class Liveness:
    """The heartbeat loop of one worker; see the module docstring.

    ``held()`` returns the jobs the worker holds now; ``on_lost(claims)`` hears the claims
    that no longer own their job; ``errors`` reports an outage. The loop ends with
    WorkerIdInUse when another live worker has this worker's id.
    """

    def __init__(
        self,
        store: WorkerStore,
        worker_id: str,
        *,
        job_types: Sequence[str],
        concurrency: int,
        interval: float,
        stale_after: float,
        instance: str,
        held: Callable[[], list[Job]],
        on_lost: Callable[[set[Claim]], None],
        errors: ErrorStreak,
        wake_capacity: Callable[[], int] = lambda: 0,
        started: Callable[[], list[int]] = list,
    ) -> None:
        self._store = store
        self._worker_id = worker_id
        self._job_types = list(job_types)
        self._concurrency = concurrency
        self._interval = interval
        self._stale_after = stale_after
        #: The worker's token in job_workers (two live ones with one worker_id: refused).
        self.instance = instance
        self._held = held
        self._on_lost = on_lost
        self._errors = errors
        self._wake_capacity = wake_capacity
        self._started = started
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None
        self._done = asyncio.Event()
        self._check = asyncio.Event()
        self._to_check: set[int] = set()
        self._beat_now = False

    def start(self, spawn: Callable[[str, Coroutine[Any, Any, Any]], asyncio.Task[Any]]) -> None:
        """Start beating, in a task that ``spawn`` starts and names."""
        self._task = spawn("liveness", self._run())

    def beat_soon(self) -> None:
        """Send the next heartbeat now (the worker stopped or started listening)."""
        self._beat_now = True
        self._check.set()

    def check_soon(self, job_id: int) -> None:
        """Read this job's row soon and stop its run here if the row says it is not ours.

        For a hint (a notification) that it was cancelled.
        """
        self._to_check.add(job_id)
        self._check.set()

    async def stop(self, within: float = 1.0) -> None:
        """End the loop (after a heartbeat under way, for at most ``within`` seconds)."""
        self._done.set()
        task, self._task = self._task, None
        if task is not None:
            await asyncio.wait({task}, timeout=max(min(within, 1.0), 0.001))
            task.cancel()
        self._drop_connection()

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()  # not close(): its peer may be gone

    async def _run(self) -> None:
        next_beat = time.monotonic()
        while not self._done.is_set():
            scheduled = time.monotonic() >= next_beat
            if scheduled or self._beat_now:
                self._beat_now = False
                await self._beat()
                if scheduled:
                    # At a fixed rate, whatever a beat took (a beat takes at most one
                    # interval): the reaper counts on one every interval from a live
                    # worker. (A beat asked for in between leaves the rate alone.)
                    next_beat = max(next_beat + self._interval, time.monotonic())
            elif self._to_check:
                await self._check_claims()
            self._check.clear()
            if self._to_check or self._beat_now:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    first_of(self._done, self._check), max(next_beat - time.monotonic(), 0.0)
                )

    async def _connection(self) -> Any:
        if self._conn is None or self._conn.is_closed():
            # Past a transaction pooler when there is a way (direct_dsn): through it,
            # handlers' transactions holding its server connections would hold heartbeats up.
            self._conn = await self._store.dedicated_connection(
                "the heartbeat connection", READ_COMMITTED, session=True
            )
        return self._conn

    async def _beat(self) -> None:
        held = self._held()
        try:
            try:
                conn = await asyncio.wait_for(self._connection(), self._interval / 2)
            except Exception as exc:
                # No connection of its own (the server or the role at its connection
                # limit, say) while the pool may still work: beat through the pool
                # rather than let a live worker's jobs be taken back.
                logger.debug("heartbeat connection: %s; beating through the pool", exc)
                self._drop_connection()
                conn = None
            # Within the interval, connecting included: a slow heartbeat must not push
            # the next one back.
            owned = await asyncio.wait_for(
                self._store.heartbeat_claims(
                    self._worker_id,
                    held,
                    job_types=self._job_types,
                    concurrency=self._concurrency,
                    conn=conn,
                    within=self._interval / 2,
                    instance=self.instance,
                    stale_after=timedelta(seconds=self._stale_after),
                    wake_capacity=self._wake_capacity(),
                    started=self._started(),
                ),
                self._interval / 2,
            )
        except WorkerIdInUse:
            raise  # ends the loop, and the worker with it: its claims would not be listed
        except Exception as exc:
            self._drop_connection()
            # No backoff: the next beat is due at its time, the reaper counts on it.
            self._errors.failed("sending heartbeats", exc)
            return
        self._errors.succeeded()
        lost = {(job.id, job.lease_id) for job in held} - owned
        if lost:
            self._on_lost(lost)

    async def _check_claims(self) -> None:
        wanted, self._to_check = self._to_check, set()
        held = [job for job in self._held() if job.id in wanted]
        if not held:
            return  # not a job of ours: nothing to read
        try:
            # Half an interval in all: the next heartbeat must not wait for this.
            conn = await asyncio.wait_for(self._connection(), self._interval / 4)
            owned = await self._store.still_owned(
                self._worker_id, held, conn=conn, within=self._interval / 4
            )
        except Exception as exc:
            # The next heartbeat reads every claim anyway.
            logger.debug("could not check jobs %s: %s", sorted(wanted), exc)
            self._drop_connection()
            return
        lost = {(job.id, job.lease_id) for job in held} - owned
        if lost:
            self._on_lost(lost)
