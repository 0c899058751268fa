"""Worker: claims due jobs for the job types it has handlers for and runs them.

One fetch loop per worker claims up to as many jobs as it has free slots, in one
statement, and runs each in its own task. Each task records its job's outcome through
the store's guarded moves, retrying that write through database hiccups. See
docs/state-machine.md for the moves and docs/configuration.md for the settings.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncpg

from .config import env_bool, env_duration, env_int
from .errors import DatabaseUnavailable, Fail, Retry, UnknownJobType
from .handlers import Handler, Handlers, JobContext, as_handlers, describe_exception
from .models import Job, JobStatus, RawJSON, encode_json
from .policies import BackoffPolicy, IdlePollPolicy, LoopErrorPolicy
from .store import INT32_MAX, PgJobStore

logger = logging.getLogger("pqrun")

_worker_numbers = itertools.count(1)


def default_worker_id() -> str:
    """``hostname-pid``; further workers in the same process get ``-2``, ``-3``, ..."""
    number = next(_worker_numbers)
    base = f"{socket.gethostname()}-{os.getpid()}"
    return base if number == 1 else f"{base}-{number}"


class _OutageLog:
    """Logs a database outage once when it starts and once when it ends, not per retry."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.since: float | None = None
        self.failures = 0

    def failure(self, doing: str, exc: BaseException) -> None:
        self.failures += 1
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

    def recovered(self) -> None:
        if self.since is None:
            return
        logger.warning(
            "worker %s: database works again after %.1fs (%d failed attempts)",
            self.worker_id,
            time.monotonic() - self.since,
            self.failures,
        )
        self.since, self.failures = None, 0


@dataclass(slots=True)
class _Outcome:
    """What a run came to, before it is written."""

    result_json: str | None = None  # set when the handler returned
    error: str = ""
    retry_after: timedelta | None = None
    terminal: bool = False


@dataclass(slots=True, eq=False)
class _InFlight:
    job: Job
    task: asyncio.Task[None] = field(init=False)
    # Past the handler, writing the outcome: shutdown lets this finish rather than cancel.
    recording: bool = False
    # Put back to READY by shutdown: whatever the task does later must not be written.
    released: bool = False


class Worker:
    """Runs jobs of the types in ``handlers``: ``{"job_type": async_handler, ...}``.

    Arguments left as None come from the environment (``WORKER_CONCURRENCY``,
    ``WORKER_ENABLED``, ``WORKER_REAPER_ENABLED``, ``WORKER_REAP_INTERVAL``,
    ``WORKER_STALE_TIMEOUT``, ``WORKER_SHUTDOWN_GRACE``, ``WORKER_SHUTDOWN_TIMEOUT``),
    else from the defaults in docs/configuration.md.

    Use it as ``FastAPI(lifespan=worker.lifespan)``, or ``await worker.run()`` in a worker
    process (stops on SIGTERM/SIGINT or ``worker.stop()``), or ``await worker.drain()`` to
    run every due job and return.
    """

    def __init__(
        self,
        store: PgJobStore,
        handlers: Handlers,
        *,
        concurrency: int | None = None,
        enable_reaper: bool | None = None,
        backoff: BackoffPolicy | None = None,
        idle_policy: IdlePollPolicy | None = None,
        loop_error_policy: LoopErrorPolicy | None = None,
        reap_stale_every_seconds: float | timedelta | None = None,
        default_stale_after: timedelta | float | None = None,
        worker_id: str | None = None,
        shutdown_grace: timedelta | float | None = None,
        shutdown_timeout: timedelta | float | None = None,
        enabled: bool | None = None,
    ) -> None:
        if not isinstance(store, PgJobStore):
            raise TypeError(f"Worker(store=...) needs a PgJobStore, got {store!r}")
        self.store = store
        self.handlers: dict[str, Handler] = as_handlers(handlers)
        self.job_types = sorted(self.handlers)
        self.enabled = env_bool("WORKER_ENABLED", enabled, True)
        self.enable_reaper = env_bool("WORKER_REAPER_ENABLED", enable_reaper, True)
        self.concurrency = env_int("WORKER_CONCURRENCY", concurrency, 1)
        self.reap_interval = env_duration(
            "WORKER_REAP_INTERVAL", reap_stale_every_seconds, timedelta(seconds=60)
        )
        if self.reap_interval <= timedelta(0):
            raise ValueError("reap_stale_every_seconds / WORKER_REAP_INTERVAL must be > 0")
        self.default_stale_after = env_duration(
            "WORKER_STALE_TIMEOUT", default_stale_after, timedelta(minutes=20)
        )
        self.shutdown_grace = env_duration(
            "WORKER_SHUTDOWN_GRACE", shutdown_grace, timedelta(seconds=20)
        )
        self.shutdown_timeout = env_duration(
            "WORKER_SHUTDOWN_TIMEOUT", shutdown_timeout, timedelta(seconds=30)
        )
        if self.shutdown_grace > self.shutdown_timeout:
            raise ValueError(
                f"shutdown_grace ({self.shutdown_grace}) must not exceed shutdown_timeout "
                f"({self.shutdown_timeout}): the timeout bounds the whole shutdown"
            )
        self.backoff = backoff if backoff is not None else BackoffPolicy()
        self.idle_policy = idle_policy if idle_policy is not None else IdlePollPolicy()
        self.loop_error_policy = (
            loop_error_policy if loop_error_policy is not None else LoopErrorPolicy()
        )
        if worker_id is not None and (not isinstance(worker_id, str) or not worker_id):
            raise ValueError(f"worker_id must be a non-empty string, got {worker_id!r}")
        self.worker_id = worker_id or default_worker_id()
        store.want_connections(self.concurrency)

        self._outage = _OutageLog(self.worker_id)
        self._in_flight: dict[int, _InFlight] = {}
        self._background: list[asyncio.Task[None]] = []
        self._started = False
        self._stopping: asyncio.Event | None = None
        self._slot_freed: asyncio.Event | None = None
        self._shutdown: asyncio.Task[None] | None = None
        self._processed = 0

    def __repr__(self) -> str:
        return (
            f"Worker({self.worker_id!r}, job_types={self.job_types}, "
            f"concurrency={self.concurrency})"
        )

    def handler_for(self, job_type: str) -> Handler:
        """The handler this worker runs for ``job_type``; UnknownJobType if it has none."""
        try:
            return self.handlers[job_type]
        except KeyError:
            raise UnknownJobType(
                f"worker {self.worker_id} has no handler for job type {job_type!r} "
                f"(it handles: {', '.join(self.job_types)}); add one to handlers=... in "
                "this worker or run a worker that has it. Jobs of that type wait in READY"
            ) from None

    # -- public lifecycle ------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        """True between ``start()`` and the end of ``stop()``."""
        return self._started

    async def start(self) -> None:
        """Open the store and, if the worker is enabled, start claiming jobs in the background.

        A database that cannot be reached yet is logged and retried by the fetch loop; a
        missing schema raises SchemaMissing.
        """
        if self._started:
            return
        try:
            await self.store.start()
        except DatabaseUnavailable as exc:
            self._outage.failure("starting", exc)
        if not self.enabled:
            logger.info("worker %s is disabled (WORKER_ENABLED=false)", self.worker_id)
            return
        self._reset()
        self._started = True
        self._background = [asyncio.create_task(self._fetch_loop(drain=False))]
        if self.enable_reaper:
            self._background.append(asyncio.create_task(self._reap_loop()))
        logger.info(
            "worker %s started: job types %s, concurrency %d",
            self.worker_id,
            ", ".join(self.job_types),
            self.concurrency,
        )

    def request_stop(self) -> None:
        """Ask a running worker to stop, without waiting (safe from a signal handler)."""
        if self._stopping is not None:
            self._stopping.set()
        if self._slot_freed is not None:
            self._slot_freed.set()

    async def stop(self) -> None:
        """Stop claiming jobs and shut down within ``shutdown_timeout``.

        Running jobs get ``shutdown_grace`` to finish; the rest are cancelled and put back
        to READY at once. Returns within ``shutdown_timeout`` even if a handler ignores
        cancellation. Calling it again, or concurrently, waits for the same shutdown.
        """
        if not self._started:
            return
        if self._shutdown is None:
            self._shutdown = asyncio.create_task(self._shut_down())
        await asyncio.shield(self._shutdown)

    async def run(self) -> None:
        """Run until ``stop()``, ``request_stop()``, SIGTERM or SIGINT, then shut down."""
        if not self.enabled:
            logger.info("worker %s is disabled (WORKER_ENABLED=false); not running", self.worker_id)
            return
        owns_store = not self.store.started
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.request_stop)
            except (NotImplementedError, RuntimeError, ValueError):
                continue  # not the main thread, or no signals on this platform
            installed.append(sig)
        try:
            await self.start()
            assert self._stopping is not None
            await self._stopping.wait()
        finally:
            await self.stop()
            for sig in installed:
                loop.remove_signal_handler(sig)
            if owns_store:
                await self.store.close()

    async def drain(self) -> int:
        """Run every due job of this worker's types, including jobs they enqueue, and return.

        Returns the number of jobs whose outcome was recorded. Jobs that are retried with
        a delay are left for later. A database error while claiming is raised.
        """
        if self._started:
            raise RuntimeError("drain() needs a worker that is not running; stop() it first")
        await self.store.start()
        self._reset()
        before = self._processed
        try:
            await self._fetch_loop(drain=True)
        finally:
            if self._in_flight:
                await asyncio.wait([f.task for f in self._in_flight.values()])
        return self._processed - before

    @asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        """Starlette/FastAPI lifespan: ``FastAPI(lifespan=worker.lifespan)``.

        Opens the store (so the app can enqueue), starts the worker unless
        WORKER_ENABLED=false, and on shutdown stops the worker and closes the store if
        this lifespan opened it.
        """
        owns_store = not self.store.started
        await self.start()
        try:
            yield
        finally:
            await self.stop()
            if owns_store:
                await self.store.close()

    # -- the loops -------------------------------------------------------------------

    def _reset(self) -> None:
        # Events are made here, not in __init__, so they belong to the running loop.
        self._stopping = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._shutdown = None
        self._in_flight = {}

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when a stop is requested."""
        assert self._stopping is not None
        with suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def _fetch_loop(self, *, drain: bool) -> None:
        assert self._stopping is not None
        assert self._slot_freed is not None
        idle_polls = 0
        errors = 0
        while not self._stopping.is_set():
            self._slot_freed.clear()
            free = self.concurrency - len(self._in_flight)
            if free <= 0:
                await self._slot_freed.wait()
                continue
            try:
                jobs = await self.store.pickup_batch(self.worker_id, self.job_types, free)
            except Exception as exc:
                if drain:
                    raise
                errors += 1
                self._outage.failure("claiming jobs", exc)
                await self._sleep(self.loop_error_policy.next_sleep(errors))
                continue
            if errors:
                errors = 0
                self._outage.recovered()
            if jobs:
                idle_polls = 0
                for job in jobs:
                    self._spawn(job)
                continue
            if drain:
                if not self._in_flight:
                    return
                await self._slot_freed.wait()  # a finishing job may have enqueued more
                continue
            idle_polls += 1
            await self._sleep(self.idle_policy.next_sleep(idle_polls))

    async def _reap_loop(self) -> None:
        assert self._stopping is not None
        while not self._stopping.is_set():
            try:
                await self.store.reap_stale(self.default_stale_after)
            except Exception as exc:
                self._outage.failure("reaping stale jobs", exc)
            await self._sleep(self.reap_interval.total_seconds())

    # -- one job ---------------------------------------------------------------------

    def _spawn(self, job: Job) -> None:
        flight = _InFlight(job)
        flight.task = asyncio.create_task(self._execute(flight), name=f"pqrun-job-{job.id}")
        self._in_flight[job.id] = flight
        flight.task.add_done_callback(lambda _task: self._landed(flight))

    def _landed(self, flight: _InFlight) -> None:
        task = flight.task
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "job %s: the worker's task for it failed; the reaper will recover the job",
                flight.job.id,
                exc_info=task.exception(),
            )
        if self._in_flight.get(flight.job.id) is flight:
            del self._in_flight[flight.job.id]
        if self._slot_freed is not None:
            self._slot_freed.set()

    async def _execute(self, flight: _InFlight) -> None:
        job = flight.job
        handler = self.handler_for(job.job_type)
        ctx = JobContext(job=job, store=self.store, worker_id=self.worker_id)
        started = time.monotonic()
        outcome = _Outcome()
        try:
            value = await handler(ctx)
        except Retry as exc:
            outcome.error = f"Retry: {exc}"
            outcome.retry_after = exc.after
        except Fail as exc:
            outcome.error = f"Fail: {exc.reason}"
            outcome.terminal = True
        except asyncio.CancelledError as exc:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the worker is cancelling this run (shutdown)
            outcome.error = describe_exception(exc)  # the handler's own, not ours
            outcome.retry_after = self.backoff.retry_delay(job.attempts)
        except Exception as exc:
            outcome.error = describe_exception(exc)
            outcome.retry_after = self.backoff.retry_delay(job.attempts)
        else:
            try:
                outcome.result_json = encode_json(
                    value, f"the value returned by the {job.job_type!r} handler"
                )
            except TypeError as exc:
                # Running it again would return the same kind of value: fail it now.
                outcome.error = str(exc)
                outcome.terminal = True
        duration_ms = min(round((time.monotonic() - started) * 1000), INT32_MAX)
        flight.recording = True
        if flight.released:
            logger.warning(
                "job %s finished after shutdown had put it back to READY; outcome dropped",
                job.id,
                extra={"job_id": job.id},
            )
            return
        await self._record(job, outcome, duration_ms)

    async def _record(self, job: Job, outcome: _Outcome, duration_ms: int) -> None:
        """Write the outcome, retrying database errors: they are not the handler's fault."""
        failures = 0
        while True:
            try:
                status = await self._write_outcome(job, outcome, duration_ms)
            except asyncpg.DataError as exc:
                if outcome.result_json is None:
                    logger.exception(
                        "job %s: the database refused its error record; the reaper will "
                        "recover the job once its lease passes",
                        job.id,
                    )
                    return
                # The database refused the result itself (say, a \u0000 in a string).
                outcome = _Outcome(
                    error=f"the handler's result could not be stored: {exc}", terminal=True
                )
                continue
            except Exception as exc:
                failures += 1
                self._outage.failure(f"recording the outcome of job {job.id}", exc)
                await asyncio.sleep(self.loop_error_policy.next_sleep(failures))
                continue
            break
        if failures:
            self._outage.recovered()
        self._processed += 1
        self._log_outcome(job, outcome, status, duration_ms)

    async def _write_outcome(
        self, job: Job, outcome: _Outcome, duration_ms: int
    ) -> JobStatus | None:
        if outcome.result_json is not None:
            done = await self.store.mark_done(job, RawJSON(outcome.result_json), duration_ms)
            return JobStatus.DONE if done else None
        return await self.store.mark_error(
            job,
            outcome.error.replace("\x00", "\\x00"),  # text columns refuse NUL
            retry_after=outcome.retry_after,
            terminal=outcome.terminal,
            duration_ms=duration_ms,
        )

    def _log_outcome(
        self, job: Job, outcome: _Outcome, status: JobStatus | None, duration_ms: int
    ) -> None:
        extra = {
            "job_id": job.id,
            "job_type": job.job_type,
            "attempt": job.attempts,
            "duration_ms": duration_ms,
            "outcome": status.value if status else "ignored",
        }
        headline = outcome.error.split("\n", 1)[0]
        if status is None:
            logger.warning(
                "job %s (%s): attempt %s by %s no longer owns the job (it was reaped, "
                "cancelled or picked again); its outcome was not recorded",
                job.id,
                job.job_type,
                job.attempts,
                self.worker_id,
                extra=extra,
            )
        elif status is JobStatus.DONE:
            logger.debug(
                "job %s (%s) done in %d ms", job.id, job.job_type, duration_ms, extra=extra
            )
        elif status is JobStatus.READY:
            logger.warning(
                "job %s (%s) attempt %s/%s failed, retrying in %s: %s",
                job.id,
                job.job_type,
                job.attempts,
                job.max_attempts,
                outcome.retry_after,
                headline,
                extra=extra,
            )
        else:
            logger.error(
                "job %s (%s) FAILED after attempt %s/%s: %s",
                job.id,
                job.job_type,
                job.attempts,
                job.max_attempts,
                headline,
                extra=extra,
            )

    # -- shutdown --------------------------------------------------------------------

    async def _shut_down(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.shutdown_timeout.total_seconds()

        def remaining() -> float:
            return max(0.0, deadline - loop.time())

        self.request_stop()
        try:
            if self._background:
                await asyncio.wait(self._background, timeout=remaining())
            flights = list(self._in_flight.values())
            if flights:
                logger.info(
                    "worker %s stopping: waiting up to %s for %d running jobs",
                    self.worker_id,
                    self.shutdown_grace,
                    len(flights),
                )
                grace = min(self.shutdown_grace.total_seconds(), remaining())
                await asyncio.wait([f.task for f in flights], timeout=grace)
            await self._interrupt_and_release(remaining)
            leftover = [f.task for f in self._in_flight.values()]
            if leftover and remaining() > 0:
                await asyncio.wait(leftover, timeout=remaining())
            stuck = [f for f in self._in_flight.values() if not f.task.done()]
            for flight in stuck:
                flight.task.cancel()
            if stuck:
                logger.error(
                    "worker %s: %d job tasks did not end within shutdown_timeout (%s): jobs "
                    "%s. A handler that catches CancelledError keeps running; jobs not put "
                    "back are recovered by the reaper",
                    self.worker_id,
                    len(stuck),
                    self.shutdown_timeout,
                    [f.job.id for f in stuck],
                )
        finally:
            for task in self._background:
                task.cancel()
            self._started = False
            logger.info("worker %s stopped", self.worker_id)

    async def _interrupt_and_release(self, remaining: Callable[[], float]) -> None:
        """Cancel the handlers still running and put their jobs back to READY at once."""
        interrupted = [f for f in self._in_flight.values() if not f.recording and not f.task.done()]
        if not interrupted:
            return
        for flight in interrupted:
            flight.released = True
            flight.task.cancel()
        jobs = [f.job for f in interrupted]
        reason = (
            f"interrupted: worker {self.worker_id} shut down before the handler finished; "
            "put back to READY"
        )
        try:
            released = await asyncio.wait_for(
                self.store.release(jobs, reason), timeout=max(remaining(), 0.001)
            )
        except Exception as exc:
            logger.error(
                "worker %s could not put jobs %s back to READY (%s: %s); the reaper will "
                "recover them once their lease passes",
                self.worker_id,
                [j.id for j in jobs],
                type(exc).__name__,
                exc,
            )
            return
        logger.warning(
            "worker %s cancelled %d running jobs at shutdown and put %s back to READY",
            self.worker_id,
            len(jobs),
            released,
        )
