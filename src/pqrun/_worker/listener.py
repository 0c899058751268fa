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
import logging
import math
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import timedelta
from typing import Any

from pqrun._store.queries import query

from .loops import Lifetime
from .runs import RunRegistry
from .store_protocol import WorkerStore
from .wake_turns import PASS_ON_SECONDS, InsertHint, WakeRoster

logger = logging.getLogger("pqrun")

# How often the LISTEN connection is checked for life (seconds).
LISTEN_PROBE_EVERY = 30.0
# The probe: a notification to our own channel, sent on the LISTEN connection itself.
PROBE_QUERY = query("listen_probe")
# Passing a hint on: an empty notification, which every worker takes as "look now".
PASS_ON_QUERY = query("wake_workers")
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
        can_take: Callable[[], bool] = lambda: True,
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
        self._can_take = can_take
        self._roster_every = roster_every
        self._default_stale_after = default_stale_after
        self._conn: Any = None
        self._conn_lock = asyncio.Lock()
        self._pass_on_due: float | None = None  # loop time of the next pass-on, if one waits
        self._last_pass_on = -math.inf
        self._timers: dict[asyncio.TimerHandle, float] = {}  # -> the due time (epoch)
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Hints passed on to every worker (this worker would not claim then).
        self.passed_on = 0
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
        if roster is not None and not roster.my_turn(hint):
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
                    self._hinted_now()

                handle = loop.call_later(wait, due_now)
                self._timers[handle] = hint.due
                return
        self._hinted_now()

    def _hinted_now(self) -> None:
        """A hint for this worker with jobs due now: claim, or pass it on if this worker
        would not claim now (another worker may be idle)."""
        self._wake()  # busy, it claims when a slot frees; idle, at once
        if self.roster is not None and self.roster.loaded and not self._can_take():
            self._pass_on()

    def _pass_on(self) -> None:
        """Notify every worker, at most once per PASS_ON_SECONDS (a hint that comes
        sooner goes with the next one, which is sent after it came)."""
        if self._pass_on_due is not None:
            return
        loop = asyncio.get_running_loop()
        self._pass_on_due = max(loop.time(), self._last_pass_on + PASS_ON_SECONDS)
        loop.call_at(self._pass_on_due, self._send_pass_on)

    def _send_pass_on(self) -> None:
        self._pass_on_due = None
        self._last_pass_on = asyncio.get_running_loop().time()
        if self._conn is None:
            return
        self.passed_on += 1
        task = asyncio.ensure_future(self._notify_everyone(self._conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _notify_everyone(self, conn: Any) -> None:
        try:
            async with self._conn_lock:
                await asyncio.wait_for(conn.execute(PASS_ON_QUERY, self._store.channel), 5)
        except Exception as exc:
            # The idle poll finds the job; a lost connection is the watcher's to see.
            logger.debug("worker %s: could not pass a hint on: %s", self._worker_id, exc)

    async def _say_left(self, conn: Any) -> None:
        """Tell the other workers not to count on this one for turns any more (its
        heartbeat, sent now, says it no longer listens), and hand them the due times of
        the delayed jobs whose turn it had."""
        due_times = sorted(set(self._timers.values()))
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        with suppress(Exception):
            async with self._conn_lock:
                channel = self._store.channel
                await asyncio.wait_for(
                    conn.execute(PROBE_QUERY, channel, f"left:{self._worker_id}"), 1
                )
                if due_times:
                    await asyncio.wait_for(conn.execute(HAND_OVER_QUERY, channel, due_times), 1)

    async def read_roster(self, conn: Any) -> None:
        """Read who is alive (on the LISTEN connection); on failure every hint is ours."""
        roster = self.roster
        if roster is None:
            return
        try:
            async with self._conn_lock:
                rows = await self._store.wake_roster(
                    self._default_stale_after, conn=conn, within=5.0
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
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    async def _watch(self, conn: Any, lost: asyncio.Event) -> None:
        """Return when stopping or when the LISTEN connection is gone or stops hearing.

        A connection can die without a word (a failover, a NAT entry dropped): the TCP
        socket stays open and no notification ever comes. So now and then the listener
        notifies its own channel and must hear that back within a few seconds. Between
        probes it reads the roster of live workers.
        """
        stop_waiter = asyncio.ensure_future(self._life.stopping.wait())
        lost_waiter = asyncio.ensure_future(lost.wait())
        loop = asyncio.get_running_loop()
        next_probe = loop.time() + LISTEN_PROBE_EVERY
        next_roster = loop.time() + self._roster_every
        try:
            while True:
                done, _ = await asyncio.wait(
                    {stop_waiter, lost_waiter},
                    timeout=max(min(next_probe, next_roster) - loop.time(), 0.0),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if done:
                    return
                if loop.time() >= next_roster:
                    await self.read_roster(conn)
                    next_roster = loop.time() + self._roster_every
                if loop.time() < next_probe:
                    continue
                next_probe = loop.time() + LISTEN_PROBE_EVERY
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
            async with self._conn_lock:
                await asyncio.wait_for(conn.execute(PROBE_QUERY, self._store.channel, payload), 5)
            await asyncio.wait_for(heard.wait(), 5)
        except Exception:
            return False
        finally:
            self._probe_waiting = None
        return True
