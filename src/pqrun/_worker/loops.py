"""What every loop of a worker shares: task names, the outage log, the error backoff.

Each component of a worker runs as an asyncio task named ``pqrun:<worker_id>:<part>``,
so that a crash is logged with the part that crashed ("pqrun:w-1:fetcher failed"), not
as "Task-7". A database outage is logged once when it starts and once when it ends,
however many loops retry in between (``OutageLog``); a loop that fails waits as the
worker's LoopErrorPolicy says, longer with each failure in a row (``ErrorStreak``).
Every failure is also told to the store's observers (``database_error``: metrics count
it by operation and kind), outage or not.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import suppress
from typing import TYPE_CHECKING, Any

import asyncpg

from pqrun._store.driver_errors import CONNECTION_ERRORS
from pqrun.errors import DatabaseUnavailable
from pqrun.observers import tell_each
from pqrun.policies import LoopErrorPolicy

if TYPE_CHECKING:
    from pqrun.observers import JobObserver

logger = logging.getLogger("pqrun")


def task_name(worker_id: str, part: str) -> str:
    """The name of the task that runs ``part`` of worker ``worker_id``."""
    return f"pqrun:{worker_id}:{part}"


# The ``operation`` label of each loop's errors (observers.DATABASE_OPERATIONS).
OPERATIONS = {
    "fetch": "claim",
    "writer": "outcome_write",
    "liveness": "heartbeat",
    "listener": "listen",
    "reaper": "reap",
    "pruner": "prune",
    "vacuumer": "vacuum",
    "schedules": "schedule",
}


def error_kind(exc: BaseException) -> str:
    """The ``kind`` of a loop's error (observers.ERROR_KINDS): ``timeout`` when a
    statement (or the wait for a connection) timed out, ``connection`` when the
    connection or server went away, else ``other``."""
    # The store raises DatabaseUnavailable from the driver's error: look down the chain.
    chain: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and len(chain) < 5:
        chain.append(link)
        link = link.__cause__ or link.__context__
    if any(isinstance(e, TimeoutError | asyncpg.QueryCanceledError) for e in chain):
        return "timeout"
    if any(isinstance(e, (DatabaseUnavailable, *CONNECTION_ERRORS)) for e in chain):
        return "connection"
    return "other"


class OutageLog:
    """Logs a database outage once when it starts and once when it ends, not per retry.

    Each loop of the worker reports under its own name; the outage ends when every loop
    that failed has succeeded again. ``observers`` gives the store's observers, which
    hear of every failure.
    """

    def __init__(
        self,
        worker_id: str,
        observers: Callable[[], Sequence[JobObserver]] = tuple,
    ) -> None:
        self.worker_id = worker_id
        self.since: float | None = None
        self.failures = 0
        self.failing: set[str] = set()
        self._observers = observers

    def counted(self, loop_name: str, exc: BaseException, operation: str | None = None) -> None:
        """Tell the observers of one failure (``failure`` does; the listener, which logs
        its own, calls this alone)."""
        operation = operation or OPERATIONS.get(loop_name, loop_name)
        tell_each(self._observers(), "database_error", self.worker_id, operation, error_kind(exc))

    def failure(
        self, loop_name: str, doing: str, exc: BaseException, *, operation: str | None = None
    ) -> None:
        self.counted(loop_name, exc, operation)
        self.failures += 1
        self.failing.add(loop_name)
        if self.since is not None:
            return
        self.since = time.monotonic()
        logger.error(
            "worker %s: database error while %s: %s: %s. Retrying with backoff; "
            "the next log line about this comes when it works again",
            self.worker_id,
            doing,
            type(exc).__name__,
            exc,
            exc_info=not isinstance(exc, DatabaseUnavailable | OSError),
        )

    def recovered(self, loop_name: str) -> None:
        self.failing.discard(loop_name)
        if self.since is None or self.failing:
            return
        logger.warning(
            "worker %s: database works again after %.1fs (%d failed attempts)",
            self.worker_id,
            time.monotonic() - self.since,
            self.failures,
        )
        self.since, self.failures = None, 0


class ErrorStreak:
    """One loop's failures in a row: reported to the outage log, and how long to wait.

    ``failed()`` logs (once per outage); ``wait()`` is how long to wait before the next
    try, for the loops that back off (others wait for their own next turn);
    ``succeeded()`` ends the streak, and the outage if this loop was the last failing.
    """

    def __init__(self, loop_name: str, outage: OutageLog, policy: LoopErrorPolicy) -> None:
        self.loop_name = loop_name
        self.count = 0
        self._outage = outage
        self._policy = policy

    def failed(self, doing: str, exc: BaseException) -> None:
        self.count += 1
        self._outage.failure(self.loop_name, doing, exc)

    def noted(self, exc: BaseException) -> None:
        """A failure this loop logs itself (not an outage): counted, told to observers."""
        self.count += 1
        self._outage.counted(self.loop_name, exc)

    def wait(self) -> float:
        """The wait before the next try, per the loop error policy."""
        return self._policy.next_sleep(self.count)

    def succeeded(self) -> None:
        # Also when this loop's failure was reported by someone else (a failed start).
        if self.count or self.loop_name in self._outage.failing:
            self.count = 0
            self._outage.recovered(self.loop_name)


class Lifetime:
    """One run of a worker, from start (or drain) to the end of its shutdown.

    Holds the stop request every loop watches, and starts each part's task under its
    name with ``on_end`` watching it (a part must not die quietly).
    """

    def __init__(self, worker_id: str, outage: OutageLog, error_policy: LoopErrorPolicy) -> None:
        self.worker_id = worker_id
        self.outage = outage
        self.error_policy = error_policy
        self.stopping = asyncio.Event()
        self.on_end: Callable[[asyncio.Task[Any]], None] | None = None

    def streak(self, loop_name: str) -> ErrorStreak:
        return ErrorStreak(loop_name, self.outage, self.error_policy)

    def spawn(self, part: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as the task of ``part``, watched by ``on_end``."""
        task = asyncio.create_task(coro, name=task_name(self.worker_id, part))
        if self.on_end is not None:
            task.add_done_callback(self.on_end)
        return task

    async def sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when a stop is requested."""
        with suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)

    async def repeat(
        self,
        loop_name: str,
        doing: str,
        step: Callable[[], Awaitable[float | None]],
        *,
        after_error: float | None = None,
    ) -> None:
        """Run ``step`` until a stop is requested, sleeping as long as it answers.

        ``step`` returns the seconds until its next turn, or None to end the loop for
        good. A failure goes to the outage log (one line per outage, "works again"
        after it), then the loop waits ``after_error`` seconds, or backs off per the
        loop error policy when that is None.
        """
        errors = self.streak(loop_name)
        while not self.stopping.is_set():
            try:
                wait = await step()
            except Exception as exc:
                errors.failed(doing, exc)
                await self.sleep(errors.wait() if after_error is None else after_error)
                continue
            errors.succeeded()
            if wait is None:
                return
            await self.sleep(wait)


async def bounded(step: Awaitable[Any], seconds: float) -> None:
    """Run ``step`` for at most ``seconds``; past that, abandon it without waiting.

    (``asyncio.wait_for`` would wait for the cancelled step to finish, which a connection
    stuck in a network partition may never do.)
    """
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=max(seconds, 0.001))
    if not done:
        task.cancel()
    elif not task.cancelled() and task.exception() is not None:
        logger.error("pqrun: a shutdown step failed", exc_info=task.exception())


async def first_of(*events: asyncio.Event) -> None:
    """Return when any of ``events`` is set."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
