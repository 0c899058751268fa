"""Waiting for jobs to finish: one LISTEN connection per store for any number of waiters.

The trigger jobs_notify_finished (ddl.sql) sends ``finished:<id>`` on the store's channel
when a job someone waits for reaches DONE, FAILED or CANCELLED.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .store import Connection, PgJobStore

logger = logging.getLogger("pqrun")


class FinishWaiters:
    """The futures of ``store.wait()`` calls, by job id, and the connection that wakes them."""

    def __init__(self, store: PgJobStore) -> None:
        self._store = store
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
            conn = await self._store.listen(self._on_payload)
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
