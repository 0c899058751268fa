"""Writing what each run came to: batched for DONE, one statement per error.

Slots hand outcomes to the OutcomeWriter and go on to their next job at once. The writer
writes whatever has gathered while its previous write was under way, so under load one
statement completes hundreds of jobs, and with a trickle each job is written at once.

It writes on a connection of its own (not the pool's, which handlers may hold), whose
``lock_timeout`` keeps a job row that another session holds locked from stalling it.
Each outcome's fate is its own:

- a failure to reach the database (a lost connection, a timeout) is retried, with the
  loop error policy, until the write lands: it is never the handler's fault and never
  makes a handler run again; the outage is logged once;
- a job whose row is locked by someone else (or a deadlock, a serialization failure) is
  put aside and retried a little later, while the others are written;
- a write the database refuses for that job's data (a result too large or too deep, a
  snooze delay past the end of time, a trigger of yours raising) is isolated by writing
  the batch one by one; that job then ends FAILED with a message naming the reason, and
  every other job is written as it came.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg

from pqrun._store.driver_errors import CONNECTION_ERRORS, ClientDataError
from pqrun._store.session_settings import READ_COMMITTED
from pqrun.models import JobStatus

from .loops import ErrorStreak
from .outcome import Outcome, end_span
from .store_protocol import WorkerStore

logger = logging.getLogger("pqrun")

MAX_BATCH = 500
# Past this many unwritten outcomes, slots wait before handing in more (an outage).
MAX_PENDING = 5000
# How long the writer waits for a job row that another session holds locked before it
# puts that outcome aside and writes the others.
LOCK_TIMEOUT_MS = 2000
# An outcome put aside (its row locked, a deadlock) is tried again after this long, then
# twice as long each time, up to the cap (seconds).
RETRY_ASIDE_FIRST = 0.05
RETRY_ASIDE_MAX = 5.0
# SQLSTATEs of a write that may well work if tried again a little later: the row was
# locked (lock_timeout), a deadlock or serialization failure, a cancelled statement, or
# the server short of connections or memory for the moment.
TRY_AGAIN_LATER = frozenset({"55P03", "40P01", "40001", "57014"})
# SQLSTATEs (or their classes) that say the server cannot take any write just now: out
# of resources (53), read-only after a failover (25006), shutting down (57P), a system
# or I/O error (58). Like a lost connection: the connection is dropped and the write
# tried again, never blamed on the job.
SERVER_CANNOT_WRITE = ("53", "25006", "57P", "58")
# A row locked by someone else is waited for as long as that lasts (and said now and
# then); any other of those errors only this many times, then the job fails with it.
LOCK_NOT_AVAILABLE = "55P03"
MAX_TRIES_ASIDE = 6


def storable_text(text: str) -> str:
    """``text`` as a PostgreSQL text column takes it: no NUL, no lone surrogates."""
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def _try_again_later(exc: BaseException) -> bool:
    return isinstance(exc, asyncpg.PostgresError) and exc.sqlstate in TRY_AGAIN_LATER


def is_refusal(exc: BaseException) -> bool:
    """True when the database (or the driver, for a value it cannot send) refused this
    write for what it holds: writing it again the same way would fail the same way.

    Anything else (a lost connection, a timeout, a driver in a state it should not be
    in) is about the connection: it is dropped, and the write tried again.
    """
    if isinstance(exc, ClientDataError):
        return True
    return (
        isinstance(exc, asyncpg.PostgresError)
        and not isinstance(exc, CONNECTION_ERRORS)
        and not (exc.sqlstate or "").startswith(SERVER_CANNOT_WRITE)
        and not _try_again_later(exc)
    )


def _refusal(exc: BaseException) -> str:
    """Why the database refused a write, in one line that names the SQLSTATE."""
    sqlstate = getattr(exc, "sqlstate", None)
    text = str(exc).split("\n", 1)[0][:300]
    code = f" (SQLSTATE {sqlstate})" if sqlstate else ""
    return f"{type(exc).__name__}{code}: {text}"


class _PutAside(Exception):
    """An outcome's row is busy: try it again later, write the others now."""


class OutcomeWriter:
    """Writes outcomes in the background; ``on_written`` hears each one after it commits.

    ``errors`` counts its failures to reach the database (the outage log, the backoff).
    """

    def __init__(
        self,
        store: WorkerStore,
        errors: ErrorStreak,
        on_written: Callable[[Outcome, JobStatus | None], None],
        *,
        delete_done: bool = False,
    ) -> None:
        self._store = store
        # delete_done=True: completions delete the jobs nobody reads after they end, until
        # the database says this role may not (then they are written DONE, as by default).
        self._delete_done = delete_done
        self._said_kept = False  # a refused delete is said once, then at debug level
        self._errors = errors
        self._on_written = on_written
        self._pending: list[Outcome] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._room = asyncio.Event()
        self._room.set()
        self._task: asyncio.Task[None] | None = None
        self._conn: Any = None
        self._closed = False
        #: The writer of the worker's next run (it was started again): an answer that
        #: comes after this one closed is written there, as it would have been before.
        self.successor: OutcomeWriter | None = None

    def start(self, spawn: Callable[[str, Coroutine[Any, Any, Any]], asyncio.Task[Any]]) -> None:
        """Start writing, in a task that ``spawn`` starts and names."""
        self._task = spawn("outcome-writer", self._run())

    async def submit(self, outcome: Outcome) -> None:
        """Queue an outcome for writing; waits only when too many are unwritten.

        After ``close()``, an answer goes to the next run's writer if the worker was
        started again; otherwise it is dropped with a warning (its job stays RUNNING
        until the reaper takes it back), and its span ends.
        """
        if not self._closed:
            await self._room.wait()  # close() opens it too
        if self._closed:
            if self.successor is not None:
                await self.successor.submit(outcome)
                return
            job = outcome.job
            logger.warning(
                "job %s (%s): its handler answered after the worker shut down; the answer "
                "is dropped, and the job stays RUNNING until the reaper takes it back",
                job.id,
                job.job_type,
                extra={"job_id": job.id},
            )
            end_span(outcome.span, None, "the worker shut down before its outcome was written")
            return
        self._pending.append(outcome)
        self._idle.clear()
        self._wake.set()
        if len(self._pending) >= MAX_PENDING:
            self._room.clear()

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
        self._closed = True
        self._room.set()  # a submit waiting for room sees the close
        task, self._task = self._task, None
        if task is None:
            self._drop_connection()
            return list(self._pending)
        flushed = asyncio.ensure_future(self.flush())
        await asyncio.wait({flushed, task}, timeout=max(within, 0.0), return_when="FIRST_COMPLETED")
        flushed.cancel()
        task.cancel()
        # Not awaited beyond a moment: a write stuck on a dead connection may never end.
        await asyncio.wait({task}, timeout=0.1)
        self._drop_connection()
        return [o for o in self._pending if not o.written]

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()  # not close(): its peer may be gone

    async def _connection(self) -> Any:
        if self._conn is None or self._conn.is_closed():
            # The server gives up on a write a second before the client would: a write
            # it cancels is known not to have happened, where one the client gave up on
            # might have committed after all.
            client_ms = round(self._store.statement_timeout * 1000)
            server_ms = max(client_ms - min(1000, client_ms // 10), 1)
            # Shorter than the statement_timeout, so that a locked row says so (55P03,
            # waited for) rather than time the statement out (57014, given up on).
            lock_ms = max(min(LOCK_TIMEOUT_MS, server_ms // 2), 1)
            # READ COMMITTED whatever the default: under a stricter one, a completion
            # racing a cancel or the reaper fails to serialize, and is put aside.
            self._conn = await self._store.dedicated_connection(
                "the outcome writer's connection",
                {
                    "lock_timeout": f"{lock_ms}ms",
                    "statement_timeout": f"{server_ms}ms",
                    **READ_COMMITTED,
                },
            )
        return self._conn

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                now = time.monotonic()
                batch = [o for o in self._pending[: MAX_BATCH * 2] if o.not_before <= now]
                batch = batch[:MAX_BATCH]
                if not batch:
                    # Only outcomes put aside are left: wait for the first of them, or
                    # for new ones.
                    wait = min(o.not_before for o in self._pending) - now
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), max(wait, 0.001))
                    self._wake.clear()
                    continue
                await self._write_with_retries(batch)
                self._pending = [o for o in self._pending if not o.written]
                if len(self._pending) < MAX_PENDING:
                    self._room.set()
            self._idle.set()

    async def _write_with_retries(self, batch: list[Outcome]) -> None:
        """Write ``batch`` until every outcome in it is written or put aside."""
        while True:
            try:
                await self._write(batch)
            except Exception as exc:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise asyncio.CancelledError from exc  # closing: stop retrying
                # _write turns every other error into one outcome's fate: this one is the
                # database out of reach.
                self._drop_connection()
                unwritten = sum(1 for o in batch if not o.written)
                self._errors.failed(f"recording the outcome of {unwritten} jobs", exc)
                await asyncio.sleep(self._errors.wait())
                continue
            self._errors.succeeded()
            return

    async def _write(self, batch: list[Outcome]) -> None:
        """Write each outcome of ``batch`` not written yet; raise only when the database
        cannot be reached."""
        conn = await self._connection()
        done = [o for o in batch if not o.written and o.result_json is not None]
        if self._delete_done:
            # Not one put aside (its row was locked): that one waits its turn below.
            fresh = [o for o in done if o.tries_aside == 0]
            if fresh:
                await self._delete_finished(conn, fresh)
                done = [o for o in done if not o.written]
        if len(done) > 1:
            try:
                moved = await self._store.mark_done_batch(
                    [(o.job, o.result_json or "", o.duration_ms) for o in done], conn=conn
                )
            except Exception as exc:
                if not is_refusal(exc) and not _try_again_later(exc):
                    raise
                # One row refused (a result too big, a trigger), or one row locked: write
                # them one by one, so that only that job has to wait or fail.
                logger.debug("outcome batch refused (%s); writing one by one", _refusal(exc))
            else:
                for outcome in done:
                    claim = (outcome.job.id, outcome.job.lease_id)
                    self._written(outcome, JobStatus.DONE if claim in moved else None)
        for outcome in batch:
            if outcome.written or outcome.not_before > time.monotonic():
                continue
            try:
                if outcome.result_json is not None:
                    await self._write_done(conn, outcome)
                if not outcome.written and outcome.result_json is None:
                    self._written(outcome, await self._write_error(conn, outcome))
            except _PutAside as aside:
                self._put_aside(outcome, aside)

    def _written(self, outcome: Outcome, status: JobStatus | None) -> None:
        outcome.written = True
        self._on_written(outcome, status)

    def _put_aside(self, outcome: Outcome, why: BaseException) -> None:
        outcome.tries_aside += 1
        delay = min(RETRY_ASIDE_FIRST * 2 ** min(outcome.tries_aside - 1, 20), RETRY_ASIDE_MAX)
        outcome.not_before = time.monotonic() + delay
        if outcome.tries_aside in (1, 20) or outcome.tries_aside % 100 == 0:
            # Said when it starts and now and then after, never silently for ever.
            cause = why.__cause__
            locked = getattr(cause, "sqlstate", None) == LOCK_NOT_AVAILABLE
            logger.warning(
                "job %s: its outcome %s (%s); tried %d times, trying again in %.2f s while "
                "the other jobs are written",
                outcome.job.id,
                "waits for its row, which another session holds"
                if locked
                else "could not be written just now",
                cause and _refusal(cause),
                outcome.tries_aside,
                delay,
                extra={"job_id": outcome.job.id, "job_type": outcome.job.job_type},
            )

    async def _write_done(self, conn: Any, outcome: Outcome) -> None:
        try:
            moved = await self._store.mark_done_batch(
                [(outcome.job, outcome.result_json or "", outcome.duration_ms)], conn=conn
            )
        except Exception as exc:
            self._raise_unless_refused(exc, outcome)
            # The database will not take this result: the job fails, with why.
            outcome.result_json = None
            outcome.error = f"the handler's result could not be stored: {_refusal(exc)}"
            outcome.retry_after = None
            outcome.terminal = True
        else:
            self._written(outcome, JobStatus.DONE if moved else None)

    async def _delete_finished(self, conn: Any, done: list[Outcome]) -> None:
        """delete_done=True: delete the jobs of ``done`` nobody reads after they end, and
        count each as written DONE at once; the rest are written DONE after, as usual."""
        try:
            self._deleted(
                done, await self._store.delete_done_batch([o.job for o in done], conn=conn)
            )
        except Exception as exc:
            if not self._delete_refused(exc, done) or len(done) == 1:
                return
            # One job's delete refused: the others are deleted one by one, so that only
            # that one is kept DONE.
            for outcome in done:
                if not self._delete_done:
                    return
                try:
                    self._deleted(
                        [outcome], await self._store.delete_done_batch([outcome.job], conn=conn)
                    )
                except Exception as one:
                    self._delete_refused(one, [outcome])

    def _deleted(self, done: list[Outcome], deleted: set[tuple[int, int | None]]) -> None:
        for outcome in done:
            if (outcome.job.id, outcome.job.lease_id) in deleted:
                self._written(outcome, JobStatus.DONE)

    def _delete_refused(self, exc: Exception, done: list[Outcome]) -> bool:
        """Whether the database refused to delete ``done`` for what they hold (they are
        then written DONE, as by default). Raises ``exc`` when it is the connection."""
        if isinstance(exc, asyncpg.InsufficientPrivilegeError):
            # Not the jobs' fault: they are written DONE instead, from now on.
            self._delete_done = False
            logger.error(
                "delete_done=True, but deleting finished jobs was refused for lack of "
                "privilege (%s): they are kept DONE from now on (and the pruner cannot "
                "delete them either). GRANT DELETE ON jobs to this role, or leave "
                "delete_done off",
                _refusal(exc),
            )
            return False
        if _try_again_later(exc):
            return False  # written DONE now, or put aside, as usual
        if not is_refusal(exc):
            raise exc  # the connection: dropped, and the batch written again
        if len(done) == 1:
            # Refused (a trigger of yours, a foreign key to the job): a job that ran is
            # not failed for that; it is written DONE, and pruned after keep_done.
            level = logging.DEBUG if self._said_kept else logging.WARNING
            self._said_kept = True
            logger.log(
                level,
                "job %s: delete_done could not delete it (%s); it is kept DONE, for the pruner",
                done[0].job.id,
                _refusal(exc),
                extra={"job_id": done[0].job.id, "job_type": done[0].job.job_type},
            )
        return True

    def _raise_unless_refused(self, exc: Exception, outcome: Outcome) -> None:
        """Re-raise ``exc`` unless the database refused this one write for its data.

        A "try again later" error is put aside, for ever when the row is locked by
        someone else, else MAX_TRIES_ASIDE times: after that it counts as a refusal.
        """
        if _try_again_later(exc):
            if (
                getattr(exc, "sqlstate", None) == LOCK_NOT_AVAILABLE
                or outcome.tries_aside < MAX_TRIES_ASIDE
            ):
                raise _PutAside() from exc
        elif not is_refusal(exc):
            raise exc  # the connection: dropped, and the batch written again

    async def _write_error(self, conn: Any, outcome: Outcome) -> JobStatus | None:
        job = outcome.job
        if outcome.snooze_after is not None:
            try:
                snoozed = await self._store.snooze(
                    job, outcome.snooze_after, duration_ms=outcome.duration_ms, conn=conn
                )
            except Exception as exc:
                self._raise_unless_refused(exc, outcome)
                # A delay past what a timestamp holds, say: not a job that can run later.
                outcome.snooze_after = None
                outcome.error = (
                    f"Snooze(after={outcome.retry_after}) could not be recorded: {_refusal(exc)}"
                )
                outcome.retry_after = None
                outcome.terminal = True
            else:
                return JobStatus.READY if snoozed else None
        try:
            return await self._store.mark_error(
                job,
                storable_text(outcome.error),
                retry_after=outcome.retry_after,
                terminal=outcome.terminal,
                duration_ms=outcome.duration_ms,
                conn=conn,
            )
        except Exception as exc:
            self._raise_unless_refused(exc, outcome)
            refusal = _refusal(exc)
        # Say what happened in plain words the database cannot refuse; an out-of-range
        # retry delay (say) becomes a failure rather than a stuck job.
        logger.error("job %s: the database refused its error record: %s", job.id, refusal)
        headline = storable_text(outcome.error.split("\n", 1)[0][:500])
        outcome.error = (
            f"{headline}\n(recorded as a failure: the database refused the outcome as it "
            f"was: {refusal})"
        )
        outcome.retry_after = None
        outcome.terminal = True
        try:
            return await self._store.mark_error(
                job, outcome.error, terminal=True, duration_ms=outcome.duration_ms, conn=conn
            )
        except Exception as exc:
            self._raise_unless_refused(exc, outcome)
            # Not even a plain failure (a trigger of yours that refuses every update?):
            # give up on this one loudly; the reaper takes the job back once stale.
            outcome.abandoned = f"the database refused every record of it: {_refusal(exc)}"
            return None
