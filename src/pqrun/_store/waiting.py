"""Waiting for jobs to finish: one LISTEN connection per store for any number of waiters.

The trigger jobs_notify_finished (ddl.sql) sends ``finished:<id>`` on the store's channel
when a job someone waits for reaches DONE, FAILED or CANCELLED.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pqrun.errors import DatabaseUnavailable, JobNotFound, WaitTimeout
from pqrun.models import Job

from .inspection import GET_JOB
from .queries import query
from .session_settings import read_committed

if TYPE_CHECKING:
    from .connections import Connection, StoreConnections

logger = logging.getLogger("pqrun")

MARK_AWAITED = query("mark_awaited")

# store.wait() is woken by a notification; it looks again after this long anyway, in
# case one was lost with a dropped connection.
WAIT_RECHECK_SECONDS = 10.0
# Where it cannot LISTEN (a transaction pooler and no direct_dsn), it looks this often.
WAIT_POLL_SECONDS = 0.25

#: Opens a connection LISTENing on the store's channel that hands each payload over.
Listen = Callable[[Callable[[str], None]], Awaitable["Connection"]]


class FinishWaiters:
    """The futures of ``store.wait()`` calls, by job id, and the connection that wakes them."""

    def __init__(self, listen: Listen, can_listen: Callable[[], bool]) -> None:
        self._listen = listen
        #: False where no connection can LISTEN: waits poll (WAIT_POLL_SECONDS).
        self.can_listen = can_listen
        self._conn: Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opening: asyncio.Lock | None = None
        self._futures: dict[int, set[asyncio.Future[None]]] = {}
        #: Counts store.close() calls: a wait that sees it change ends (the store closed).
        self.closings = 0

    async def watch(self, job_id: int) -> asyncio.Future[None]:
        """A future set when job ``job_id`` may have finished (or the connection dropped)."""
        await self._listening()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._futures.setdefault(job_id, set()).add(future)
        return future

    def forget(self, job_id: int, future: asyncio.Future[None]) -> None:
        waiting = self._futures.get(job_id)
        if waiting is not None:
            waiting.discard(future)
            if not waiting:
                del self._futures[job_id]

    async def close(self) -> None:
        self.closings += 1
        conn, self._conn = self._conn, None
        if conn is not None and self._loop is asyncio.get_running_loop():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2.0)
        elif conn is not None:
            conn.terminate()
        self._wake_all()

    async def _listening(self) -> None:
        if not self.can_listen():
            return  # nothing wakes the futures: wait() polls
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # A connection and futures of another (finished) event loop are useless here.
            if self._conn is not None:
                self._conn.terminate()
            self._conn, self._loop, self._opening = None, loop, asyncio.Lock()
            self._futures.clear()
        if self._conn is not None and not self._conn.is_closed():
            return
        assert self._opening is not None
        async with self._opening:
            if self._conn is not None and not self._conn.is_closed():
                return
            conn = await self._listen(self._on_payload)
            conn.add_termination_listener(self._on_lost)
            self._conn = conn

    def _on_payload(self, payload: str) -> None:
        if not payload.startswith("finished:"):
            return
        try:
            job_id = int(payload.removeprefix("finished:"))
        except ValueError:
            return
        for future in self._futures.get(job_id, ()):
            if not future.done():
                future.set_result(None)

    def _on_lost(self, conn: Any) -> None:
        if conn is not self._conn:
            return  # closed on purpose (store.close()), or already replaced
        # Notifications sent while no connection listens are lost: every waiter looks.
        logger.info("the connection store.wait() listens on was lost; reconnecting")
        self._conn = None
        self._wake_all()

    def _wake_all(self) -> None:
        for futures in self._futures.values():
            for future in futures:
                if not future.done():
                    future.set_result(None)


class WaitMethods:
    """PgJobStore's wait() (the app's)."""

    _db: StoreConnections
    _waiters: FinishWaiters

    async def wait(
        self,
        job_id: int,
        timeout: float | timedelta | None = 30.0,  # noqa: ASYNC109 - the documented API
    ) -> Job:
        """Wait until the job is DONE, FAILED or CANCELLED, and return it.

        Woken by a notification when the job finishes (whoever finishes it), so many
        waiters cost no polling; ``timeout`` (seconds or a timedelta, None: no limit)
        raises WaitTimeout. JobNotFound if there is no such job. A job that fails and is
        retried later is not finished: the wait goes on.
        """
        if isinstance(job_id, bool) or not isinstance(job_id, int) or not 1 <= job_id < 2**63:
            raise ValueError(f"job_id must be a job's id (an int >= 1), got {job_id!r}")
        joined = self._db.joined()
        if joined is not None and joined.is_in_transaction():
            raise RuntimeError(
                f"store.wait({job_id}) inside store.transaction(): the job cannot finish "
                "while your transaction is open (it may not even be committed yet), and "
                "the wait would hold its row; call wait() after the block"
            )
        if isinstance(timeout, timedelta):
            timeout = timeout.total_seconds()
        if timeout is not None and (isinstance(timeout, bool) or timeout < 0):
            raise ValueError(f"timeout must be seconds >= 0, a timedelta or None, got {timeout!r}")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        closings = self._waiters.closings
        while True:
            if self._waiters.closings != closings:
                raise DatabaseUnavailable(
                    f"the store was closed while waiting for job {job_id}; it goes on "
                    "regardless: wait for it again on an open store, or look with get_job()"
                )
            # Marked before the LISTEN opens, which may take a while: from the mark on,
            # the job's end is written (never deleted, delete_done) and announced; one
            # that comes before the LISTEN is ready is read below.
            async with self._db.acquire(join=False) as conn:
                # (READ COMMITTED: under a stricter default, a mark that waited for a
                # worker's move of the job would fail to serialize.)
                await read_committed(
                    self._db,
                    conn,
                    lambda: conn.fetchval(
                        MARK_AWAITED, job_id, self._db.channel, timeout=self._db.statement_timeout
                    ),
                )
            woken = await self._waiters.watch(job_id)
            try:
                async with self._db.acquire(join=False) as conn:
                    row = await conn.fetchrow(GET_JOB, job_id, timeout=self._db.statement_timeout)
                if row is None:
                    raise JobNotFound(
                        f"no job with id {job_id}: it was never enqueued here (check the "
                        "store's database and schema), or it was pruned, or it ended on a "
                        "worker with delete_done=True before this wait began"
                    )
                job = Job.from_record(row)
                if job.status.is_finished:
                    return job
                pause = WAIT_RECHECK_SECONDS if self._waiters.can_listen() else WAIT_POLL_SECONDS
                if deadline is not None:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        raise WaitTimeout(
                            f"job {job_id} ({job.job_type}) is still {job.status.value} "
                            f"after {timeout:g} s (attempt {job.attempts} of "
                            f"{job.max_attempts}); wait longer, or check that a worker "
                            "handles this job type (pqrun status)"
                        )
                    pause = min(pause, remaining)
                # The notification wakes this at once; the pause only bounds how long a
                # notification lost with a dropped connection could hold it up.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(woken), pause)
            finally:
                self._waiters.forget(job_id, woken)
