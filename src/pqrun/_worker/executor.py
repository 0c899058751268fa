"""The executor: ``concurrency`` slots, each taking jobs from the buffer and running them.

A slot runs one handler at a time, within the job's deadline, and turns what it did
(returned, raised Retry/Snooze/Fail or anything else, timed out, was cancelled) into one
``Outcome``, handed to the outcome writer. The moves of a run are in runs.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from pqrun import tracing
from pqrun._json_encoding import JSONEncoding
from pqrun.errors import Fail, Retry, Snooze
from pqrun.handlers import Handler, JobContext, context_for, describe_exception
from pqrun.limits import INT32_MAX
from pqrun.models import Job
from pqrun.observers import tell

from .fetcher import BUFFER_WAIT_LIMIT, NO_PREFETCH_SECONDS, Fetcher
from .loops import Lifetime
from .outcome import Outcome, RunOutcome, end_span, report_cancelled, report_released
from .outcome_writer import OutcomeWriter
from .runs import Run, RunRegistry
from .settings import WorkerSettings
from .store_protocol import WorkerStore

if TYPE_CHECKING:
    from pqrun.store import PgJobStore

logger = logging.getLogger("pqrun")

# A slot whose handlers never wait lets the event loop run other tasks at least this
# often (seconds).
YIELD_EVERY = 0.001


class LoopTurns:
    """Tells whether the event loop has had a turn since a moment, at the cost of one
    callback per turn: ``mark()`` arms a callback (if none is armed) and returns the turns
    so far; once ``count`` differs from a mark, everything that was ready to run at that
    mark has run."""

    def __init__(self) -> None:
        self.count = 0
        self._armed = False

    def mark(self) -> int:
        if not self._armed:
            self._armed = True
            asyncio.get_running_loop().call_soon(self._turned)
        return self.count

    def _turned(self) -> None:
        self.count += 1
        self._armed = False


class Executor:
    """The slots of one worker run; ``start()`` starts them, ``slots`` are their tasks."""

    def __init__(
        self,
        settings: WorkerSettings,
        store: WorkerStore,
        registry: RunRegistry,
        fetcher: Fetcher,
        writer: OutcomeWriter,
        life: Lifetime,
        release: Callable[[list[Job], str], Awaitable[None]],
    ) -> None:
        self._settings = settings
        self._store = store
        # Results are encoded as the store encodes payloads; a double of a store may
        # have no json_encoder (then plain JSON only).
        self._encode_result = JSONEncoding(getattr(store, "json_encoder", None))
        self._registry = registry
        self._fetcher = fetcher
        self._writer = writer
        self._life = life
        self._release = release
        self.slots: list[asyncio.Task[None]] = []
        self._turns = LoopTurns()

    def start(self) -> None:
        self.slots = [
            self._life.spawn(f"slot-{n}", self._slot()) for n in range(self._settings.concurrency)
        ]

    async def _slot(self) -> None:
        last_yield = time.monotonic()
        turns = self._turns
        registry = self._registry
        task = asyncio.current_task()
        assert task is not None
        while (claimed := await self._take()) is not None:
            job, claimed_at = claimed
            if not registry.holds(job):
                continue  # found no longer ours (cancelled, taken back) while being taken
            if self._waited_too_long(job, claimed_at):
                await self._release([job], "waited too long in the worker's buffer; put back")
                continue
            handler = self._settings.handlers[job.job_type]
            turn_at_start = turns.mark()
            run = registry.start_run(job, task, is_thread=not handler.is_async)
            for observer in self._store.observers:
                tell(observer.started, job)
            span = None
            try:
                if tracing.AVAILABLE:
                    span = tracing.start_run_span(job)
                if span is None:  # no tracer: not even a context manager per job
                    outcome = await self._run_handler(run, handler, span)
                else:
                    with tracing.current_span(span):
                        outcome = await self._run_handler(run, handler, span)
            except Exception as exc:  # a fault of pqrun's own: still record something
                logger.exception("job %s: the worker failed around its handler", job.id)
                outcome = Outcome(
                    job=job,
                    duration_ms=0,
                    error=f"the worker failed around the handler: {describe_exception(exc)}",
                    retry_after=self.retry_delay(job),
                    span=span,
                )
            except BaseException:
                # Shutdown cancelled the slot: a released run is put back by shutdown.
                if run.released:
                    end_span(span, RunOutcome.RELEASED, "put back to READY by shutdown")
                else:
                    end_span(span, None, "the slot running the handler was cancelled")
                raise
            finally:
                registry.running.discard(run)
                if self._fetcher.runs_low():
                    self._fetcher.want_more.set()  # claim more (or, draining, look again)
            if run.released:
                report_released(job, span)
                continue
            run.answer()
            if outcome is None:
                # Cancelled, or taken back: the row is someone else's to move now.
                registry.drop(job)
                continue
            try:
                await self._writer.submit(outcome)
            except BaseException:
                end_span(span, None, "the worker failed to hand on the outcome")
                raise
            # A handler that never waits would let this slot run the whole buffer before
            # the fetch loop and the writer get a turn: claiming, running and writing
            # overlap only if slots yield now and then. A handler that waited gave the
            # loop its turn already; yielding again would only delay this slot's next job.
            now = time.monotonic()
            if turns.count != turn_at_start:
                last_yield = now
            elif now - last_yield >= YIELD_EVERY:
                last_yield = now
                await asyncio.sleep(0)

    async def watch_buffer(self, others_take: Callable[[str], bool]) -> None:
        """Give prefetched jobs back to READY when every slot stays busy past
        BUFFER_WAIT_LIMIT and another worker takes their type: held here they would wait
        for a slot while that worker may be idle (and would show as RUNNING though no
        handler runs them)."""
        registry = self._registry
        while not self._life.stopping.is_set():
            await self._life.sleep(BUFFER_WAIT_LIMIT / 2)
            given = self._fetcher.clogged_buffer(others_take)
            if not given:
                continue
            jobs = [job for job, _claimed_at in given]
            try:
                # Shielded: a shutdown that cancels this loop must not leave the statement
                # half known (its jobs released but still held, or the reverse).
                released = await asyncio.shield(self._store.release(jobs, None))
            except Exception as exc:
                # Still this worker's claims, still held (its heartbeats list them): run
                # them here after all, and give nothing back for a while.
                registry.buffer.extendleft(reversed(given))
                registry.job_ready.set()
                logger.warning(
                    "worker %s could not give %d prefetched jobs back to other workers "
                    "(%s: %s); it runs them itself",
                    self._settings.worker_id, len(jobs), type(exc).__name__, exc,
                )  # fmt: skip
                await self._life.sleep(NO_PREFETCH_SECONDS)
                continue
            for job in jobs:
                # Released, or (missing from the answer) no longer ours: not ours to run.
                registry.drop(job)
            logger.info(
                "worker %s gave %d prefetched jobs back to READY: every slot stayed busy for "
                "%.1f s, and other workers take them",
                self._settings.worker_id, len(released), BUFFER_WAIT_LIMIT,
            )  # fmt: skip

    async def _take(self) -> tuple[Job, float] | None:
        registry = self._registry
        want_more = self._fetcher.want_more
        while not self._life.stopping.is_set():
            if registry.buffer:
                if self._fetcher.runs_low(taking=1) and not want_more.is_set():
                    # The buffer runs low: let the fetch loop send its claim now, so that
                    # it overlaps with running what is left. (Before taking the job: in
                    # the buffer it still counts against the slots, so the claim does not
                    # take one more job than the slots can run.)
                    want_more.set()
                    await asyncio.sleep(0)
                    if not registry.buffer:
                        continue
                return registry.buffer.popleft()
            registry.job_ready.clear()
            want_more.set()
            await registry.job_ready.wait()
        return None

    def _waited_too_long(self, job: Job, claimed_at: float) -> bool:
        """True for a job that waited in the buffer half its deadline or stale period: it
        goes back. (A plain function: a coroutine per job cost more than the test.)"""
        limit = job.timeout_seconds or self._settings.default_stale_after.total_seconds()
        return time.monotonic() - claimed_at >= limit / 2

    async def _run_handler(self, run: Run, handler: Handler, span: Any) -> Outcome | None:
        """Run the job's handler (in the slot's task, run.task); None when store.cancel()
        stopped it."""
        job = run.job
        # Handlers get the worker's store as it is: a double given to the worker stands in
        # for the PgJobStore in them too.
        store = cast("PgJobStore", self._store)
        ctx = context_for(job, store, self._settings.worker_id)
        started = time.monotonic()
        outcome = Outcome(job=job, duration_ms=0, span=span)
        # No deadline, no timer: most jobs have none.
        deadline = None if job.timeout_seconds is None else asyncio.timeout(job.timeout_seconds)
        try:
            return await self._handle(run, handler, ctx, deadline, outcome, started)
        finally:
            # A cancel requested for this run that the handler swallowed must not stay
            # counted on the slot's task: it would end the slot at the next one.
            if run.claim_lost and not run.cancel_consumed:
                run.cancel_consumed = True
                run.task.uncancel()

    async def _handle(
        self,
        run: Run,
        handler: Handler,
        ctx: JobContext,
        deadline: asyncio.Timeout | None,
        outcome: Outcome,
        started: float,
    ) -> Outcome | None:
        job = run.job
        try:
            if deadline is None:
                value = await handler(ctx)
            else:
                async with deadline:
                    value = await handler(ctx)
        except Retry as exc:
            outcome.error = f"Retry: {exc}"
            outcome.retry_after = exc.after
        except Snooze as exc:
            outcome.snooze_after = exc.after
            outcome.retry_after = exc.after  # when it comes due again
        except Fail as exc:
            outcome.error = f"Fail: {exc.reason}"
            outcome.terminal = True
        except (KeyboardInterrupt, GeneratorExit) as exc:
            # Raised by the handler's own code (a worker stops on SIGINT/SIGTERM through
            # its signal handlers, not through this): the job's failure, like any other
            # exception, so that one bad job neither stops the worker nor stays RUNNING.
            outcome.error = (
                f"{describe_exception(exc)}\n(the handler raised {type(exc).__name__}; "
                "counted as a failed attempt, the worker goes on)"
            )
            outcome.retry_after = self.retry_delay(job)
        except BaseException as exc:
            current = asyncio.current_task()
            if isinstance(exc, asyncio.CancelledError) and current and current.cancelling():
                # Ours: store.cancel() (the slot goes on with its next job), or shutdown.
                if run.claim_lost and not run.cancel_consumed:
                    run.cancel_consumed = True
                    remaining = current.uncancel()
                else:
                    remaining = current.cancelling()
                if run.claim_lost and remaining == 0:
                    elapsed = time.monotonic() - started
                    duration_ms = min(round(elapsed * 1000), INT32_MAX)
                    report_cancelled(self._store.observers, job, outcome.span, elapsed, duration_ms)
                    return None
                raise
            if deadline is not None and deadline.expired():
                outcome.error = (
                    f"timed out: the handler ran past the job's timeout_seconds "
                    f"({job.timeout_seconds} s) and was cancelled"
                )
            else:
                # Any other exception, SystemExit and the handler's own CancelledError
                # too, is the job's failure, not the worker's.
                outcome.error = describe_exception(exc)
            outcome.retry_after = self.retry_delay(job)
        else:
            try:
                outcome.result_json = self._encode_result(
                    value, f"the value returned by the {job.job_type!r} handler", "result"
                )
            except Exception as exc:  # TypeError, ValueError, RecursionError (too deep)
                # Running it again would return the same kind of value: fail it now.
                outcome.error = (
                    str(exc)
                    if isinstance(exc, TypeError)
                    else (
                        f"the value returned by the {job.job_type!r} handler could not be "
                        f"encoded as JSON: {type(exc).__name__}: {exc}"
                    )
                )
                outcome.terminal = True
        elapsed = time.monotonic() - started
        outcome.duration_ms = min(round(elapsed * 1000), INT32_MAX)
        self._fetcher.measured(elapsed)
        return outcome

    def retry_delay(self, job: Job) -> timedelta:
        try:
            return self._settings.backoff.retry_delay(job.attempts)
        except Exception:
            logger.exception("the backoff policy failed for job %s; retrying in 1 minute", job.id)
            return timedelta(minutes=1)
