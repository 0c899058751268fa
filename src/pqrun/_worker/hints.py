"""What a worker does with a notification of inserted jobs ('jobs:...'): claim on its turn,
at the due time for delayed jobs, and check for jobs the others woken left behind.

The listener hands each parsed hint here; whose turn it is comes from the roster
(wake_turns.py). Statements go over the listener's own connection, one at a time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from pqrun._store.queries import query

from .loops import Lifetime
from .store_protocol import WorkerStore
from .wake_turns import CHECK_AFTER_SECONDS, InsertHint, Turn, WakeRoster

logger = logging.getLogger("pqrun")

# Waking every worker for jobs left behind: an empty notification ("look now").
WAKE_EVERYONE_QUERY = query("wake_workers")
# A stopping worker's due times, sent to every worker as 'due-in:<seconds>'.
HAND_OVER_QUERY = query("hand_over_due_times")
# The most due times a stopping worker hands over.
MAX_HANDED_OVER = 1000
# Hints of delayed jobs this worker keeps a timer for; beyond, it only wakes at their time.
MAX_DUE_TIMERS = 1000
# How long a statement on the listener's connection may take (seconds).
STATEMENT_SECONDS = 5.0


class InsertHints:
    """Claims, timers and checks for the 'jobs:' hints one worker hears."""

    def __init__(
        self,
        store: WorkerStore,
        life: Lifetime,
        roster: WakeRoster | None,
        *,
        wake: Callable[[], None],
        expect_due: Callable[[float], None],
        claim_room: Callable[[], int],
        due_times: Callable[[], list[float]],
        connection: Callable[[], Any],
        connection_free: Callable[[], AbstractAsyncContextManager[None]],
    ) -> None:
        self._store = store
        self._life = life
        self._worker_id = life.worker_id
        self._roster = roster
        self._wake = wake
        self._expect_due = expect_due
        self._claim_room = claim_room
        self._due_times = due_times
        self._connection = connection
        self._connection_free = connection_free
        # Delayed hints whose turn this worker has: timer -> the loop time it is due.
        self._timers: dict[asyncio.TimerHandle, float] = {}
        # Checks to make: (loop time to check at, the hint, loop time it was heard).
        self._checks: list[tuple[float, InsertHint, float]] = []
        self._checker: asyncio.Task[None] | None = None
        self._everyone_woken_at = -1.0  # loop time an empty notification was last heard
        #: Times this worker woke every worker for jobs the others woken left behind.
        self.woke_everyone = 0
        #: Hints heard, and checks for jobs left behind it planned (for tests, metrics).
        self.hints_heard = 0
        self.checks_planned = 0
        #: The database's clock minus this machine's (seconds), as the listener last
        #: read it: due times in hints are the database's.
        self.clock_offset = 0.0
        self._told: set[float] = set()  # due times handed over already
        self._dropped: set[float] = set()  # due times of timers forget() cancelled

    @property
    def delayed(self) -> int:
        """Delayed hints this worker waits to claim for."""
        return len(self._timers)

    def _untold(self) -> list[float]:
        """The due times (epoch seconds, this machine's clock) this worker means to look
        again at and has not told the others of."""
        loop_now, now = asyncio.get_running_loop().time(), time.time()
        due = {round(now + at - loop_now, 3) for at in self._timers.values()}
        due.update(round(at, 3) for at in self._due_times())
        due.update(self._dropped)
        return sorted(at for at in due - self._told if at > now)

    def to_hand_over(self) -> bool:
        """Whether a stopping worker has due times, or checks, to tell the others."""
        return bool(self._checks) or bool(self._untold())

    def everyone_woken(self) -> None:
        """An empty notification was heard: every idle worker looks now, so checks for
        hints heard before it are moot."""
        self._everyone_woken_at = asyncio.get_running_loop().time()

    def heard(self, hint: InsertHint, turn: Turn | None = None) -> None:
        """Jobs of one type were inserted: claim them if it is this worker's turn
        (``turn``: already known, for a delayed hint whose timer fired)."""
        if turn is None:
            self.hints_heard += 1
            roster = self._roster
            turn = roster.turn(hint) if roster is not None else Turn(claims=True)
        if not turn.claims:
            return
        wait = 0.0 if hint.due is None else hint.due - self.clock_offset - time.time()
        if wait > 0:
            if len(self._timers) >= MAX_DUE_TIMERS or self._life.stopping.is_set():
                self._expect_due(time.time() + wait)
                return
            loop = asyncio.get_running_loop()
            handle: asyncio.TimerHandle

            def due_now() -> None:
                self._timers.pop(handle, None)
                self.heard(hint, turn)  # again: early by a clock step or drift, it waits on

            handle = loop.call_later(wait, due_now)
            self._timers[handle] = loop.time() + wait
            # And the fetcher looks once more a moment after, should this claim come a
            # little early by the database's clock and find nothing.
            self._expect_due(time.time() + wait + CHECK_AFTER_SECONDS)
            return
        self._due_now(hint.now_due(), turn)

    def _due_now(self, hint: InsertHint, turn: Turn) -> None:
        """Claim; and where workers of the type were not woken, look a moment later for
        jobs left behind: the last one named always (one named before it may be gone,
        or busier than its capacity said, or take other jobs first), any other one that
        has no room for them all itself a moment later still."""
        self._wake()  # busy, it claims when a slot frees; idle, at once
        if not turn.others_left:
            return
        if turn.last:
            after = CHECK_AFTER_SECONDS
        elif self._claim_room() < hint.count:
            after = 2 * CHECK_AFTER_SECONDS
        else:
            return
        now = asyncio.get_running_loop().time()
        self.checks_planned += 1
        self._checks.append((now + after, hint, now))
        if self._checker is None or self._checker.done():
            self._checker = asyncio.ensure_future(self._check_left_behind())

    async def _check_left_behind(self) -> None:
        """Make the checks as they come due, one read for all that are due, at most one
        read per CHECK_AFTER_SECONDS; wake every worker if a job was left behind."""
        loop = asyncio.get_running_loop()
        while self._checks:
            soonest = min(at for at, _, _ in self._checks)
            await asyncio.sleep(max(soonest - loop.time(), 0.0))
            now = loop.time()
            due = [c for c in self._checks if c[0] <= now]
            self._checks = [c for c in self._checks if c[0] > now]
            # An empty notification heard after a hint: every worker looked since.
            hints = [hint for _, hint, heard in due if heard > self._everyone_woken_at]
            conn = self._connection()
            if not hints or conn is None:
                continue  # (not listening: the idle poll finds them)
            try:
                async with self._connection_free():
                    left = await self._store.jobs_left_behind(
                        [(h.job_type, h.first_id, h.last_id) for h in hints],
                        conn=conn,
                        within=STATEMENT_SECONDS,
                    )
                    if left:
                        self.woke_everyone += 1
                        await conn.execute(
                            WAKE_EVERYONE_QUERY, self._store.channel, timeout=STATEMENT_SECONDS
                        )
            except Exception as exc:
                # The idle poll finds them; a lost connection is the listener's to see.
                logger.debug("worker %s: could not check for jobs left: %s", self._worker_id, exc)
            await asyncio.sleep(CHECK_AFTER_SECONDS)

    async def hand_over(self, conn: Any) -> bool:
        """Tell every worker when this one (stopping) meant to look again: its delayed
        turns and the due times its fetcher knows (retries, snoozes), as 'due-in:<s>'
        notifications, and wake them all if a check was still to come. Called when it
        stops listening, and once more after its last outcomes are written. False if
        they could not be sent."""
        untold = self._untold()[:MAX_HANDED_OVER]
        now = time.time()
        payloads = [f"due-in:{at - now:.3f}" for at in untold]
        if self._checks:
            payloads.append("")  # a check it will not make: everyone looks now
        if not payloads:
            return True
        try:
            async with self._connection_free():
                await conn.execute(
                    HAND_OVER_QUERY, self._store.channel, payloads, timeout=STATEMENT_SECONDS
                )
        except Exception as exc:
            logger.debug("worker %s: could not hand turns over: %s", self._worker_id, exc)
            return False
        self._told.update(untold)
        self._checks.clear()
        return True

    def forget(self) -> None:
        """Stop every timer and check (the worker stops); what they were for can still
        be handed over."""
        loop_now, now = asyncio.get_running_loop().time(), time.time()
        self._dropped.update(round(now + at - loop_now, 3) for at in self._timers.values())
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self._checks.clear()
        if self._checker is not None:
            self._checker.cancel()
