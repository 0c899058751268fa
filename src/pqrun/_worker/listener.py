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

from .loops import Lifetime
from .runs import RunRegistry
from .store_protocol import WorkerStore
from .wake_turns import CHECK_AFTER_SECONDS, InsertHint, Turn, WakeRoster

logger = logging.getLogger("pqrun")

# How often, at most, the LISTEN connection is checked for life (seconds): with each
# roster read, and so at every heartbeat interval when that is shorter.
LISTEN_PROBE_EVERY = 30.0
# The probe: a notification to our own channel, sent on the LISTEN connection itself.
PROBE_QUERY = query("listen_probe")
# Waking every worker for jobs left behind: an empty notification ("look now").
WAKE_EVERYONE_QUERY = query("wake_workers")
# How long the listener waits for its LISTEN connection to be free for a statement.
CONNECTION_WAIT = 5.0
# A stopping worker's turns for delayed jobs, handed to every worker.
HAND_OVER_QUERY = query("hand_over_due_times")
# Hints of delayed jobs this worker keeps a timer for; beyond, it only wakes at their time.
MAX_DUE_TIMERS = 1000


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
        self._claim_room = claim_room
        self._roster_every = roster_every
        self._default_stale_after = default_stale_after
        self._conn: Any = None
        self._conn_lock = asyncio.Lock()
        self._timers: dict[asyncio.TimerHandle, float] = {}  # -> the due time (epoch)
        self._to_check: dict[str, int] = {}  # job type -> the lowest first id to look from
        self._checker: asyncio.Task[None] | None = None
        #: Times this worker woke every worker for jobs the others woken left behind.
        self.woke_everyone = 0
        self._on_hearing = on_hearing

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
        elif payload.startswith("jobs:"):
            hint = InsertHint.parse(payload)
            if hint is not None:
                self._hinted(hint)
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
        else:
            # An epoch alone: a delayed job of a statement that inserted several types.
            with suppress(ValueError, OverflowError):
                due = float(payload)
                if math.isfinite(due):
                    self._expect_due(due)

    def _hinted(self, hint: InsertHint) -> None:
        """Jobs of one type were inserted: claim them if it is this worker's turn."""
        roster = self.roster
        turn = roster.turn(hint) if roster is not None else Turn(claims=True, checks=False)
        if not turn.claims:
            return
        if hint.due is not None:
            wait = hint.due - time.time()
            if wait > 0:
                if len(self._timers) >= MAX_DUE_TIMERS or self._life.stopping.is_set():
                    self._expect_due(hint.due)
                    return
                loop = asyncio.get_running_loop()
                handle: asyncio.TimerHandle

                def due_now() -> None:
                    self._timers.pop(handle, None)
                    self._hinted_now(hint, turn)

                handle = loop.call_later(wait, due_now)
                self._timers[handle] = hint.due
                return
        self._hinted_now(hint, turn)

    def _hinted_now(self, hint: InsertHint, turn: Turn) -> None:
        """Claim; and if this worker is the one to check, and cannot take the jobs all
        itself, look a moment later for any the others woken left behind."""
        self._wake()  # busy, it claims when a slot frees; idle, at once
        if turn.checks and self._claim_room() < hint.count:
            first_id = self._to_check.get(hint.job_type)
            if first_id is None or hint.first_id < first_id:
                self._to_check[hint.job_type] = hint.first_id
            if self._checker is None or self._checker.done():
                self._checker = asyncio.ensure_future(self._check_left_behind())

    async def _check_left_behind(self) -> None:
        """After CHECK_AFTER_SECONDS (the others' claims go first), one read for every
        hint to check; if a job was left behind, wake every worker. At most one read per
        CHECK_AFTER_SECONDS."""
        while self._to_check:
            await asyncio.sleep(CHECK_AFTER_SECONDS)
            hints, self._to_check = list(self._to_check.items()), {}
            conn = self._conn
            if conn is None:
                return  # not listening: the idle poll finds them
            try:
                async with self._connection_free():
                    if not await self._store.jobs_left_behind(
                        hints, conn=conn, within=CONNECTION_WAIT
                    ):
                        continue
                    self.woke_everyone += 1
                    await conn.execute(
                        WAKE_EVERYONE_QUERY, self._store.channel, timeout=CONNECTION_WAIT
                    )
            except Exception as exc:
                # The idle poll finds them; a lost connection is the watcher's to see.
                logger.debug("worker %s: could not check for jobs left: %s", self._worker_id, exc)

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
        heartbeat, sent now, says it no longer listens), and hand them the due times of
        the delayed jobs whose turn it had."""
        with suppress(Exception):
            async with self._connection_free():
                await conn.execute(
                    PROBE_QUERY, self._store.channel, f"left:{self._worker_id}", timeout=1
                )
        await self._hand_over(conn)

    async def _hand_over(self, conn: Any) -> None:
        """Send the due times of the delayed jobs whose turn this worker had to every
        worker ('<epoch>' notifications), and forget them."""
        if not self._timers:
            return
        due_times = sorted(set(self._timers.values()))
        try:
            async with self._connection_free():
                await conn.execute(HAND_OVER_QUERY, self._store.channel, due_times, timeout=1)
        except Exception as exc:
            logger.debug("worker %s: could not hand turns over: %s", self._worker_id, exc)
            return
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

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
        if self._timers:
            # Stopping while not listening: hand the turns over on a connection of its own.
            with suppress(Exception):
                conn = await asyncio.wait_for(
                    self._store.dedicated_connection("handing turns over", session=True), 2
                )
                try:
                    await self._hand_over(conn)
                finally:
                    conn.terminate()
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._checker is not None:
            self._checker.cancel()

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
