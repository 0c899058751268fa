"""The listener: LISTEN on the queue's channel, so that new jobs wake the fetcher at once.

Idle polling is the fallback: the listener only makes the worker look sooner. It keeps
one connection of its own LISTENing, reconnects when it drops, and now and then checks
that the connection still hears (a failover or a dropped NAT entry can leave a socket
open that no notification ever reaches).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from pqrun._store.queries import query

from .loops import Lifetime
from .runs import RunRegistry
from .store_protocol import WorkerStore

logger = logging.getLogger("pqrun")

# How often the LISTEN connection is checked for life (seconds).
LISTEN_PROBE_EVERY = 30.0
# The probe: a notification to our own channel, sent on the LISTEN connection itself.
PROBE_QUERY = query("listen_probe")


class Listener:
    """Turns notifications into hints: ``wake()`` the fetcher, ``expect_due(epoch)``,
    or ``check_soon(job_id)`` for a job of ours that may have been cancelled."""

    def __init__(
        self,
        store: WorkerStore,
        registry: RunRegistry,
        life: Lifetime,
        *,
        wake: Callable[[], None],
        expect_due: Callable[[float], None],
        check_soon: Callable[[int], None],
    ) -> None:
        self._store = store
        self._registry = registry
        self._life = life
        self._worker_id = life.worker_id
        self._wake = wake
        self._expect_due = expect_due
        self._check_soon = check_soon
        self._probes = 0
        self._probe_waiting: tuple[str, asyncio.Event] | None = None

    def on_notification(self, payload: str) -> None:
        """A notification on the queue's channel: a hint, never an order.

        Any role that can connect may NOTIFY on the channel, so nothing heard here moves
        a job or stops a run by itself: a wake-up only makes the worker look sooner, and
        a cancel notice only makes it read that job's row (docs/security.md).
        """
        if not payload:
            self._wake()
        elif payload.startswith("probe:"):
            waiting = self._probe_waiting
            if waiting is not None and waiting[0] == payload:
                waiting[1].set()
        elif payload.startswith("cancel:"):
            with suppress(ValueError):
                job_id = int(payload.removeprefix("cancel:"))
                if self._registry.holds_job_id(job_id):
                    self._check_soon(job_id)
        elif payload.startswith("finished:"):
            return  # for store.wait()
        else:
            with suppress(ValueError, OverflowError):
                due = float(payload)
                if math.isfinite(due):
                    self._expect_due(due)

    async def run(self) -> None:
        """Keep a LISTEN connection open; reconnect when it drops. Polling covers the gaps."""
        # Its own warning, not the outage log's: without LISTEN the worker still works.
        failures = self._life.streak("listener")
        stopping = self._life.stopping
        while not stopping.is_set():
            try:
                conn = await self._store.listen(self.on_notification)
            except Exception as exc:
                failures.count += 1
                if failures.count == 1:
                    logger.warning(
                        "worker %s: cannot LISTEN for new jobs (%s: %s); polling until it can",
                        self._worker_id,
                        type(exc).__name__,
                        exc,
                    )
                await self._life.sleep(failures.wait())
                continue
            failures.count = 0
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
            if conn.is_closed():  # dropped before the callback was in place
                lost.set()
            self._wake()  # jobs may have come while nobody listened
            try:
                await self._watch(conn, lost)
            finally:
                # terminate(), not close(): close() waits on a peer that may be gone.
                conn.terminate()

    async def _watch(self, conn: Any, lost: asyncio.Event) -> None:
        """Return when stopping or when the LISTEN connection is gone or stops hearing.

        A connection can die without a word (a failover, a NAT entry dropped): the TCP
        socket stays open and no notification ever comes. So now and then the listener
        notifies its own channel and must hear that back within a few seconds.
        """
        stop_waiter = asyncio.ensure_future(self._life.stopping.wait())
        lost_waiter = asyncio.ensure_future(lost.wait())
        try:
            while True:
                done, _ = await asyncio.wait(
                    {stop_waiter, lost_waiter},
                    timeout=LISTEN_PROBE_EVERY,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if done:
                    return
                if not await self.hears_itself(conn):
                    logger.warning(
                        "worker %s: the LISTEN connection stopped hearing notifications; "
                        "reconnecting",
                        self._worker_id,
                    )
                    return
        finally:
            stop_waiter.cancel()
            lost_waiter.cancel()

    async def hears_itself(self, conn: Any) -> bool:
        """Notify our own channel on the LISTEN connection; True if it comes back."""
        self._probes += 1
        payload = f"probe:{self._worker_id}:{self._probes}"
        heard = asyncio.Event()
        self._probe_waiting = (payload, heard)
        try:
            await asyncio.wait_for(conn.execute(PROBE_QUERY, self._store.channel, payload), 5)
            await asyncio.wait_for(heard.wait(), 5)
        except Exception:
            return False
        finally:
            self._probe_waiting = None
        return True
