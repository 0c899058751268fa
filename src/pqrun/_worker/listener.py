"""The listener: LISTEN on the queue's channel, so that new jobs wake the fetcher at once.

Idle polling is the fallback: the listener only makes the worker look sooner. It keeps
one connection of its own LISTENing, reconnects when it drops, and now and then checks
that the connection still hears (a failover or a dropped NAT entry can leave a socket
open that no notification ever reaches). On that connection it also reads the roster of
live workers every few seconds, so that a notification of inserted jobs wakes only the
workers whose turn it is (wake_turns.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from datetime import timedelta
from typing import Any

from pqrun._store.queries import query

from .hints import InsertHints
from .loops import Lifetime
from .runs import RunRegistry
from .store_protocol import WorkerStore
from .wake_turns import InsertHint, WakeRoster

logger = logging.getLogger("pqrun")

# How often, at most, the LISTEN connection is checked for life (seconds): with each
# roster read, and so at every heartbeat interval when that is shorter.
LISTEN_PROBE_EVERY = 30.0
# The probe: a notification to our own channel, sent on the LISTEN connection itself.
PROBE_QUERY = query("listen_probe")
# The database's clock, read with the roster: due times in notifications are its.
CLOCK_QUERY = query("database_clock")
# A 'due-in:' notification further ahead than this (seconds) is not believed.
MAX_DUE_IN = 10 * 365 * 86400.0
# How long the listener waits for its LISTEN connection to be free for a statement.
CONNECTION_WAIT = 5.0


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
        roster: WakeRoster | None = None,
        claim_room: Callable[[], int] = lambda: 1,
        due_times: Callable[[], list[float]] = list,
        roster_every: float = 5.0,
        default_stale_after: timedelta = timedelta(seconds=30),
        on_hearing: Callable[[], None] = lambda: None,
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
        #: Whose turn a notification of inserted jobs is; None: every one is ours.
        self.roster = roster
        self._roster_every = roster_every
        self._default_stale_after = default_stale_after
        self._conn: Any = None
        self._conn_lock = asyncio.Lock()
        self._on_hearing = on_hearing
        #: The 'jobs:' hints: claims on this worker's turns, delayed ones, checks.
        self.hints = InsertHints(
            store,
            life,
            roster,
            wake=wake,
            expect_due=expect_due,
            claim_room=claim_room,
            due_times=due_times,
            connection=lambda: self._conn,
            connection_free=self._connection_free,
        )

    @property
    def hearing(self) -> bool:
        """True while the LISTEN connection is up (the heartbeat says so: the other
        workers count on this one for its turns only then)."""
        return self._conn is not None

    def on_notification(self, payload: str) -> None:
        """A notification on the queue's channel: a hint, never an order.

        Any role that can connect may NOTIFY on the channel, so nothing heard here moves
        a job or stops a run by itself: a wake-up only makes the worker look sooner, and
        a cancel notice only makes it read that job's row (docs/security.md).
        """
        if not payload:
            self._wake()
            self.hints.everyone_woken()
        elif payload.startswith("jobs:"):
            hint = InsertHint.parse(payload)
            if hint is not None:
                self.hints.heard(hint)
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
        elif payload.startswith("left:"):
            if self.roster is not None:
                self.roster.drop(payload.removeprefix("left:"))
        elif payload.startswith("due-in:"):
            # A stopping worker meant to look then (its delayed turns, retries, snoozes).
            with suppress(ValueError, OverflowError):
                wait = float(payload.removeprefix("due-in:"))
                if 0 < wait <= MAX_DUE_IN:
                    self._expect_due(time.time() + wait)
        else:
            # An epoch alone (the database's clock): a delayed job of a statement that
            # inserted several types.
            with suppress(ValueError, OverflowError):
                due = float(payload)
                if math.isfinite(due):
                    self._expect_due(due - self.hints.clock_offset)

    @contextlib.asynccontextmanager
    async def _connection_free(self) -> AsyncIterator[None]:
        """The LISTEN connection runs one statement at a time: wait for it, not forever."""
        await asyncio.wait_for(self._conn_lock.acquire(), CONNECTION_WAIT)
        try:
            yield
        finally:
            self._conn_lock.release()

    async def _say_left(self, conn: Any) -> None:
        """Tell the other workers not to count on this one for turns any more (its
        heartbeat, sent now, says it no longer listens), then hand them the delayed
        jobs whose turn it had."""
        with suppress(Exception):
            async with self._connection_free():
                await conn.execute(
                    PROBE_QUERY, self._store.channel, f"left:{self._worker_id}", timeout=1
                )
        await self.hints.hand_over(conn)

    async def hand_over_rest(self) -> None:
        """Stopping: tell the others what this worker has not told them yet (it was not
        listening, or outcomes written since added retries and snoozes), on a
        connection of its own."""
        if not self.hints.to_hand_over():
            return
        with suppress(Exception):
            conn = await asyncio.wait_for(
                self._store.dedicated_connection("handing turns over", session=True), 2
            )
            try:
                await self._say_left(conn)
            finally:
                conn.terminate()

    async def read_roster(self, conn: Any) -> None:
        """Read who is alive (on the LISTEN connection); on failure every hint is ours."""
        roster = self.roster
        if roster is None:
            return
        try:
            async with self._connection_free():
                rows = await self._store.wake_roster(
                    self._default_stale_after, conn=conn, within=CONNECTION_WAIT
                )
                before = time.time()
                database_now = await conn.fetchval(CLOCK_QUERY, timeout=CONNECTION_WAIT)
                self.hints.clock_offset = database_now - (before + time.time()) / 2
        except Exception as exc:
            roster.loaded = False
            logger.debug("worker %s: could not read the live workers: %s", self._worker_id, exc)
            return
        roster.replace(rows)

    async def run(self) -> None:
        """Keep a LISTEN connection open; reconnect when it drops. Polling covers the gaps."""
        # Its own warning, not the outage log's: without LISTEN the worker still works.
        failures = self._life.streak("listener")
        stopping = self._life.stopping
        while not stopping.is_set():
            try:
                conn = await self._store.listen(self.on_notification)
            except Exception as exc:
                failures.noted(exc)
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
            self._conn = conn
            self._on_hearing()
            await self.read_roster(conn)
            self._wake()  # jobs may have come while nobody listened
            try:
                await self._watch(conn, lost)
            finally:
                self._conn = None
                self._on_hearing()
                if stopping.is_set() and not lost.is_set():
                    await self._say_left(conn)
                # terminate(), not close(): close() waits on a peer that may be gone.
                conn.terminate()
        await self.hand_over_rest()
        self.hints.forget()

    async def _watch(self, conn: Any, lost: asyncio.Event) -> None:
        """Return when stopping or when the LISTEN connection is gone or stops hearing.

        A connection can die without a word (a failover, a NAT entry dropped): the TCP
        socket stays open and no notification ever comes. So now and then the listener
        notifies its own channel and must hear that back within a few seconds, after
        reading the roster of live workers.
        """
        stop_waiter = asyncio.ensure_future(self._life.stopping.wait())
        lost_waiter = asyncio.ensure_future(lost.wait())
        every = min(self._roster_every, LISTEN_PROBE_EVERY)
        try:
            while True:
                done, _ = await asyncio.wait(
                    {stop_waiter, lost_waiter}, timeout=every, return_when=asyncio.FIRST_COMPLETED
                )
                if done:
                    return
                await self.read_roster(conn)
                # The others count on this worker while its heartbeat says it listens:
                # a connection that stopped hearing must not go unnoticed for long.
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
            async with self._connection_free():
                await conn.execute(PROBE_QUERY, self._store.channel, payload, timeout=5)
            await asyncio.wait_for(heard.wait(), 5)
        except Exception:
            return False
        finally:
            self._probe_waiting = None
        return True
