"""Writing what each run came to: batched for DONE, one statement per error.

Slots hand outcomes to the OutcomeWriter and go on to their next job at once. The writer
writes whatever has gathered while its previous write was under way, so under load one
statement completes hundreds of jobs, and with a trickle each job is written at once.
Database errors are retried with the loop error policy until the write lands: they are
never the handler's fault and never make a handler run again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from .models import Job, JobStatus
from .policies import LoopErrorPolicy
from .store import PgJobStore

logger = logging.getLogger("pqrun")

MAX_BATCH = 500
# Past this many unwritten outcomes, slots wait before handing in more (an outage).
MAX_PENDING = 5000


@dataclass(slots=True)
class Outcome:
    """What one run came to, before it is written."""

    job: Job
    duration_ms: int
    result_json: str | None = None  # set when the handler returned
    error: str = ""
    retry_after: timedelta | None = None
    terminal: bool = False
    snooze_after: timedelta | None = None  # set when the handler raised Snooze
    # Set once its write committed, so that retrying a partly written batch is safe.
    written: bool = False


def storable_text(text: str) -> str:
    """``text`` as a PostgreSQL text column takes it: no NUL, no lone surrogates."""
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


class OutcomeWriter:
    """Writes outcomes in the background; ``on_written`` hears each one after it commits."""

    def __init__(
        self,
        store: PgJobStore,
        error_policy: LoopErrorPolicy,
        on_failure: Callable[[str, str, BaseException], None],
        on_recovery: Callable[[str], None],
        on_written: Callable[[Outcome, JobStatus | None], None],
    ) -> None:
        self._store = store
        self._error_policy = error_policy
        self._on_failure = on_failure
        self._on_recovery = on_recovery
        self._on_written = on_written
        self._pending: list[Outcome] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._room = asyncio.Event()
        self._room.set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pqrun-outcome-writer")

    async def submit(self, outcome: Outcome) -> None:
        """Queue an outcome for writing; waits only when too many are unwritten."""
        await self._room.wait()
        self._pending.append(outcome)
        self._idle.clear()
        self._wake.set()
        if len(self._pending) >= MAX_PENDING:
            self._room.clear()

    def unwritten_jobs(self) -> list[Job]:
        """The jobs whose outcome is waiting to be written (they still need heartbeats)."""
        return [o.job for o in self._pending if not o.written]

    @property
    def idle(self) -> bool:
        """True when every outcome submitted so far is written."""
        return self._idle.is_set()

    async def flush(self) -> None:
        """Wait until every outcome submitted so far is written."""
        await self._idle.wait()

    async def close(self, within: float) -> list[Outcome]:
        """Write what is pending for up to ``within`` seconds, then stop.

        Returns the outcomes that could not be written in time (their jobs stay RUNNING
        until the reaper takes them back).
        """
        task, self._task = self._task, None
        if task is None:
            return list(self._pending)
        flushed = asyncio.ensure_future(self.flush())
        await asyncio.wait({flushed, task}, timeout=max(within, 0.0), return_when="FIRST_COMPLETED")
        flushed.cancel()
        task.cancel()
        # Not awaited beyond a moment: a write stuck on a dead connection may never end.
        await asyncio.wait({task}, timeout=0.1)
        return [o for o in self._pending if not o.written]

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._pending[:MAX_BATCH]
                await self._write_with_retries(batch)
                del self._pending[: len(batch)]
                if len(self._pending) < MAX_PENDING:
                    self._room.set()
            self._idle.set()

    async def _write_with_retries(self, batch: list[Outcome]) -> None:
        failures = 0
        while True:
            try:
                await self._write(batch)
            except Exception as exc:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise asyncio.CancelledError from exc  # closing: stop retrying
                failures += 1
                self._on_failure("writer", f"recording the outcome of {len(batch)} jobs", exc)
                await asyncio.sleep(self._error_policy.next_sleep(failures))
                continue
            if failures:
                self._on_recovery("writer")
            return

    async def _write(self, batch: list[Outcome]) -> None:
        done = [o for o in batch if not o.written and o.result_json is not None]
        if done:
            try:
                moved = await self._store.mark_done_batch(
                    [(o.job, o.result_json or "", o.duration_ms) for o in done]
                )
            except asyncpg.DataError:
                # The database refused a result (a \u0000 in a string, say). Write them
                # one by one so that only the offending job fails.
                await self._write_done_one_by_one(done)
            else:
                for outcome in done:
                    claim = (outcome.job.id, outcome.job.lease_id)
                    self._written(outcome, JobStatus.DONE if claim in moved else None)
        for outcome in batch:
            if not outcome.written:
                self._written(outcome, await self._write_error(outcome))

    def _written(self, outcome: Outcome, status: JobStatus | None) -> None:
        outcome.written = True
        self._on_written(outcome, status)

    async def _write_done_one_by_one(self, done: list[Outcome]) -> None:
        for outcome in done:
            try:
                moved = await self._store.mark_done_batch(
                    [(outcome.job, outcome.result_json or "", outcome.duration_ms)]
                )
            except asyncpg.DataError as exc:
                # Left unwritten: the caller writes it as a failure.
                outcome.result_json = None
                outcome.error = f"the handler's result could not be stored: {exc}"
                outcome.terminal = True
            else:
                self._written(outcome, JobStatus.DONE if moved else None)

    async def _write_error(self, outcome: Outcome) -> JobStatus | None:
        if outcome.snooze_after is not None:
            snoozed = await self._store.snooze(
                outcome.job, outcome.snooze_after, duration_ms=outcome.duration_ms
            )
            return JobStatus.READY if snoozed else None
        try:
            return await self._store.mark_error(
                outcome.job,
                storable_text(outcome.error),
                retry_after=outcome.retry_after,
                terminal=outcome.terminal,
                duration_ms=outcome.duration_ms,
            )
        except asyncpg.DataError as exc:
            # Say what happened in plain words the database cannot refuse; an
            # out-of-range retry delay (say) becomes a failure rather than a stuck job.
            logger.error("job %s: the database refused its error record: %s", outcome.job.id, exc)
            return await self._store.mark_error(
                outcome.job,
                f"the error could not be recorded as raised ({type(exc).__name__}); "
                "see the worker's log",
                terminal=True,
                duration_ms=outcome.duration_ms,
            )
