"""Worker: claims due jobs for the job types it has handlers for and runs them.

Inside a worker:

- one **fetch loop** claims jobs in one statement per batch (``FOR UPDATE SKIP LOCKED
  LIMIT n``) into a local buffer: up to the free slots, plus a prefetch sized to about
  50 ms of work at the handlers' measured speed (none for slow handlers);
- ``concurrency`` **slots** take jobs from the buffer and run their handlers;
- the **outcome writer** records what each run came to, many jobs per statement;
- a **listener** (LISTEN on the store's channel) wakes the fetch loop when jobs are
  inserted, and tells it when delayed jobs come due; idle polling is the fallback;
- a **heartbeat** keeps the worker in the registry and its jobs alive, and the **reaper**
  takes back jobs whose heartbeat went stale (one reaper at a time).

See docs/state-machine.md for the moves and docs/configuration.md for the settings.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import os
import secrets
import signal
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import asyncpg

from . import tracing
from .config import env_bool, env_duration, env_int
from .errors import (
    DatabaseUnavailable,
    Fail,
    PayloadInvalid,
    Retry,
    Snooze,
    UnknownJobType,
    WorkerIdInUse,
)
from .handlers import Handler, Handlers, JobContext, as_handlers, describe_exception
from .liveness import Claim, Liveness
from .models import Job, JobStatus, encode_json
from .outcomes import Outcome, OutcomeWriter
from .payloads import validate
from .policies import BackoffPolicy, IdlePollPolicy, LoopErrorPolicy
from .schedules import Schedule
from .store import HEARTBEATS_PER_STALE_PERIOD, INT32_MAX, PgJobStore, _tell

if TYPE_CHECKING:
    from .metrics import MetricsServer

logger = logging.getLogger("pqrun")

_worker_numbers = itertools.count(1)

# The prefetch holds about this much work, at the handlers' average speed.
PREFETCH_SECONDS = 0.05
DEFAULT_PREFETCH_LIMIT = 1000
# Weight of the newest run in the average handler duration.
DURATION_SMOOTHING = 0.1
# A slot lets the event loop run other tasks at least this often (seconds).
YIELD_EVERY = 0.001
# How long drain() waits for outcomes it cannot write before it gives up (seconds).
DRAIN_WRITE_WAIT = 60.0
# Due times of delayed jobs a worker remembers to wake for (the earliest are kept).
MAX_DUE_TIMES = 1000
# How often the LISTEN connection is checked for life (seconds).
LISTEN_PROBE_EVERY = 30.0
# The schedule loop sleeps until the next tick, within these bounds (seconds): the upper
# one lets it see schedules that other workers declared or moved.
SCHEDULE_MIN_SLEEP = 0.05
SCHEDULE_MAX_SLEEP = 30.0
# A worker writes its schedules' definitions when it starts and again this often (s).
SCHEDULE_REDECLARE_EVERY = 300.0
# While a worker is busy, a limited job type that had nothing due is claimed again after
# this long (seconds) at the latest, or at once when one of its jobs finishes here.
LIMITED_RECHECK_SECONDS = 0.05
# Pruning deletes at most this many rows per transaction, this many transactions per
# step, and pauses this long (seconds) between steps while a backlog lasts.
PRUNE_BATCH_SIZE = 1000
PRUNE_BATCHES_PER_STEP = 10
PRUNE_PAUSE = 0.5
# The reaper takes jobs back only once some worker's heartbeats (its own or another's)
# have reached the database for this many heartbeat intervals without a gap. After an
# outage every heartbeat is stale at once; by then every worker that is alive has sent
# one again (their heartbeat connections retry every interval), so only the jobs of the
# dead are taken back. Any worker will do as the witness, so a worker that has just
# started can reap at once: workers that restart often still recover their dead.
REAP_AFTER_HEARTBEATS = 3


def default_worker_id() -> str:
    """``hostname-pid-xxxx``: four random hex digits, because a restarted container often
    has the hostname and pid of the one before it (pid 1), whose heartbeats may still
    be fresh; further workers in the same process get ``-2``, ``-3``, ... before them."""
    number = next(_worker_numbers)
    base = f"{socket.gethostname()}-{os.getpid()}"
    if number != 1:
        base = f"{base}-{number}"
    return f"{base}-{secrets.token_hex(2)}"


class _OutageLog:
    """Logs a database outage once when it starts and once when it ends, not per retry.

    Each loop of the worker reports under its own name; the outage ends when every loop
    that failed has succeeded again.
    """

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.since: float | None = None
        self.failures = 0
        self.failing: set[str] = set()

    def failure(self, loop_name: str, doing: str, exc: BaseException) -> None:
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


@dataclass(slots=True, eq=False)
class _InFlight:
    """A job whose handler a slot is running."""

    job: Job
    task: asyncio.Task[Any]
    # A plain function runs in a thread, which cannot be interrupted.
    is_thread: bool = False
    # store.cancel() asked for this run to stop: its CancelledError is the job's end.
    cancel_requested: bool = False
    # That request was taken back from the slot's task (Task.uncancel()).
    cancel_consumed: bool = False
    # Put back to READY by shutdown: whatever the handler returns later is dropped.
    released: bool = False
    # The run handed an outcome to the writer (or was found cancelled): nothing is left
    # to put back for it.
    answered: bool = False


class Worker:
    """Runs jobs of the types in ``handlers``: ``{"job_type": async_handler, ...}``.

    Arguments left as None come from the environment (``WORKER_CONCURRENCY``,
    ``WORKER_ENABLED``, ``WORKER_REAPER_ENABLED``, ``WORKER_REAP_INTERVAL``,
    ``WORKER_STALE_TIMEOUT``, ``WORKER_SHUTDOWN_GRACE``, ``WORKER_SHUTDOWN_TIMEOUT``,
    ``WORKER_PRUNE_ENABLED``, ``WORKER_PRUNE_INTERVAL``, ``WORKER_KEEP_DONE``,
    ``WORKER_KEEP_FAILED``), else from the defaults in docs/configuration.md.

    Retention: every ``prune_every_seconds`` (5 min) one worker at a time deletes DONE
    jobs finished more than ``keep_done`` (1 day) ago and FAILED/CANCELLED ones older
    than ``keep_failed`` (7 days), in batches of 1,000 rows; ``enable_pruning=False``
    keeps every job.

    Use it as ``FastAPI(lifespan=worker.lifespan)``, or ``await worker.run()`` in a worker
    process (stops on SIGTERM/SIGINT or ``worker.stop()``), or ``await worker.drain()`` to
    run every due job and return.
    """

    _background: list[asyncio.Task[Any]]
    _failure: BaseException | None

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
        prefetch: int | None = None,
        listen: bool = True,
        schedules: Sequence[Schedule] = (),
        enable_pruning: bool | None = None,
        prune_every_seconds: float | timedelta | None = None,
        keep_done: timedelta | float | None = None,
        keep_failed: timedelta | float | None = None,
        metrics_port: int | None = None,
        metrics_host: str = "0.0.0.0",
    ) -> None:
        if not isinstance(store, PgJobStore):
            raise TypeError(f"Worker(store=...) needs a PgJobStore, got {store!r}")
        self.store = store
        self.handlers: dict[str, Handler] = as_handlers(handlers)
        self.job_types = sorted(self.handlers)
        # Types whose handler has a concurrency or rate limit are claimed apart, one
        # worker at a time (docs/flow-control.md); the rest in one statement.
        self._limited = {t: h for t, h in sorted(self.handlers.items()) if h.is_limited}
        self._unlimited_types = [t for t in self.job_types if t not in self._limited]
        for job_type, handler in self.handlers.items():
            if handler.payload_model is not None:
                store.register_payload_model(job_type, handler.payload_model)
        self.enabled = env_bool("WORKER_ENABLED", enabled, True)
        self.enable_reaper = env_bool("WORKER_REAPER_ENABLED", enable_reaper, True)
        self.concurrency = env_int("WORKER_CONCURRENCY", concurrency, 1)
        self.prefetch_limit = env_int("WORKER_PREFETCH", prefetch, DEFAULT_PREFETCH_LIMIT, 0)
        self.listen = listen
        port = env_int("WORKER_METRICS_PORT", metrics_port, -1, 0)
        #: Where the worker serves Prometheus metrics while it runs (None: it does not).
        self.metrics_port: int | None = port if port >= 0 else None
        self.metrics_host = metrics_host
        self._metrics_server: MetricsServer | None = None
        if self.metrics_port is not None:
            try:
                from .metrics import instrument
            except ImportError as exc:
                raise ImportError(
                    f"Worker(metrics_port=...) needs prometheus_client ({exc}); "
                    "pip install 'pqrun[metrics]'"
                ) from exc
            instrument(store)
        self.default_stale_after = env_duration(
            "WORKER_STALE_TIMEOUT", default_stale_after, timedelta(seconds=30)
        )
        if self.default_stale_after <= timedelta(0):
            raise ValueError("default_stale_after / WORKER_STALE_TIMEOUT must be > 0")
        # A dead worker's jobs go back within one stale period and one reap interval of
        # its last heartbeat: a third of the stale period by default (10 s).
        self.reap_interval = env_duration(
            "WORKER_REAP_INTERVAL", reap_stale_every_seconds, self.default_stale_after / 3
        )
        if self.reap_interval <= timedelta(0):
            raise ValueError("reap_stale_every_seconds / WORKER_REAP_INTERVAL must be > 0")
        # Several heartbeats fit in the stale period, so one slow write is no death.
        self.heartbeat_interval = self.default_stale_after / HEARTBEATS_PER_STALE_PERIOD
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
        # Retention: finished jobs are deleted once old enough, by one worker at a time.
        self.enable_pruning = env_bool("WORKER_PRUNE_ENABLED", enable_pruning, True)
        self.prune_interval = env_duration(
            "WORKER_PRUNE_INTERVAL", prune_every_seconds, timedelta(minutes=5)
        )
        if self.prune_interval <= timedelta(0):
            raise ValueError("prune_every_seconds / WORKER_PRUNE_INTERVAL must be > 0")
        self.keep_done = env_duration("WORKER_KEEP_DONE", keep_done, timedelta(days=1))
        self.keep_failed = env_duration("WORKER_KEEP_FAILED", keep_failed, timedelta(days=7))
        self.backoff = backoff if backoff is not None else BackoffPolicy()
        self.idle_policy = idle_policy if idle_policy is not None else IdlePollPolicy()
        self.loop_error_policy = (
            loop_error_policy if loop_error_policy is not None else LoopErrorPolicy()
        )
        if worker_id is not None and (not isinstance(worker_id, str) or not worker_id):
            raise ValueError(f"worker_id must be a non-empty string, got {worker_id!r}")
        self.worker_id = worker_id or default_worker_id()
        self.schedules = list(schedules)
        names: set[str] = set()
        for schedule in self.schedules:
            if not isinstance(schedule, Schedule):
                raise TypeError(f"schedules=[...] takes Schedule objects, got {schedule!r}")
            if schedule.name in names:
                raise ValueError(
                    f"two schedules are named {schedule.name!r}: give each a name= of its own"
                )
            names.add(schedule.name)
            runs_it = self.handlers.get(schedule.job_type)
            if runs_it is not None and runs_it.payload_model is not None:
                try:
                    validate(runs_it.payload_model, schedule.payload or {}, schedule.job_type)
                except PayloadInvalid as exc:
                    raise ValueError(f"schedule {schedule.name!r}: {exc}") from None
            elif runs_it is None:
                logger.warning(
                    "worker %s enqueues schedule %r, but has no handler for its job type %r: "
                    "its jobs wait for a worker that has one",
                    self.worker_id,
                    schedule.name,
                    schedule.job_type,
                )
        store.want_connections(self.concurrency)

        self._outage = _OutageLog(self.worker_id)
        # This Worker object's token in job_workers, the same across its runs and drains:
        # another live worker with the same worker_id has another one, and is refused.
        self._instance = secrets.token_hex(8)
        self._started = False
        self._shutdown: asyncio.Task[None] | None = None
        self._processed = 0
        self._reset()

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

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """(host, port) of the metrics server while it runs (the real port for port 0)."""
        server = self._metrics_server
        return None if server is None else server.address

    async def _start_metrics(self) -> None:
        if self.metrics_port is None or self._metrics_server is not None:
            return
        from .metrics import MetricsServer, instrument

        server = MetricsServer(instrument(self.store), self.metrics_host, self.metrics_port)
        await server.start()
        self._metrics_server = server
        logger.info("worker %s serves metrics at %s", self.worker_id, server.url)

    async def _stop_metrics(self) -> None:
        server, self._metrics_server = self._metrics_server, None
        if server is not None:
            await server.close()

    # -- public lifecycle ------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        """True between ``start()`` and the end of ``stop()``."""
        return self._started

    async def start(self) -> None:
        """Open the store and, if the worker is enabled, start running jobs in the background.

        A database that cannot be reached yet is logged and retried; a missing schema
        raises SchemaMissing.
        """
        if self._started:
            return
        self._reset()
        await self._start_after_reset()

    async def _start_after_reset(self) -> None:
        # From _reset() on, a stop request is kept, even one that comes while the store
        # is still connecting.
        if not self.enabled:
            await self._open_store()
            logger.info("worker %s is disabled (WORKER_ENABLED=false)", self.worker_id)
            return
        self._started = True
        try:
            await self._start_metrics()
            await self._open_store()
        except BaseException:
            self._started = False
            await self._stop_metrics()
            raise
        if self._stopping.is_set():
            return
        self._start_slots()
        self._start_heartbeats()
        self._background = [
            asyncio.create_task(self._fetch_loop(drain=False), name="pqrun-fetch-loop"),
        ]
        if self.enable_reaper:
            self._background.append(asyncio.create_task(self._reap_loop()))
        if self.enable_pruning:
            self._background.append(asyncio.create_task(self._prune_loop(), name="pqrun-prune"))
        if self.listen:
            self._background.append(asyncio.create_task(self._listen_loop()))
        if self.schedules:
            self._background.append(
                asyncio.create_task(self._schedule_loop(), name="pqrun-schedules")
            )
        for task in self._background:
            task.add_done_callback(self._loop_ended)
        logger.info(
            "worker %s started: job types %s, concurrency %d",
            self.worker_id,
            ", ".join(self.job_types),
            self.concurrency,
        )

    def _close_wait(self) -> float:
        """How long closing the store may wait for connections still in use."""
        # A handler that ignored cancellation may hold one for ever: do not wait on it.
        return 1.0 if self._running else 10.0

    async def _open_store(self) -> None:
        try:
            await self.store.start()
        except DatabaseUnavailable as exc:
            self._outage.failure("fetch", "starting", exc)

    def _loop_ended(self, task: asyncio.Task[Any]) -> None:
        """A loop or slot of the worker must not die quietly: log it and stop the worker."""
        if task.cancelled():
            if not self._stopping.is_set():
                logger.error(
                    "worker %s: %s was cancelled unexpectedly; stopping the worker",
                    self.worker_id,
                    task.get_name(),
                )
                self._failure = self._failure or asyncio.CancelledError(task.get_name())
                self.request_stop()
                if self._started and self._shutdown is None:
                    self._shutdown = asyncio.ensure_future(self._shut_down())
            return
        if task.exception() is None:
            return
        logger.error(
            "worker %s: %s failed; stopping the worker",
            self.worker_id,
            task.get_name(),
            exc_info=task.exception(),
        )
        self._failure = self._failure or task.exception()
        self.request_stop()
        if self._started and self._shutdown is None:
            # Under start() or a lifespan nobody else would notice: shut down for real.
            self._shutdown = asyncio.ensure_future(self._shut_down())

    def request_stop(self) -> None:
        """Ask a running worker to stop, without waiting (safe from a signal handler)."""
        for event in (self._stopping, self._job_ready, self._want_more, self._wakeup):
            event.set()

    async def stop(self) -> None:
        """Stop claiming jobs and shut down within ``shutdown_timeout``.

        Jobs claimed but not started go back to READY at once; running jobs get
        ``shutdown_grace`` to finish; the rest are cancelled and put back to READY at
        once. Returns within ``shutdown_timeout`` even if a handler ignores cancellation.
        Calling it again, or concurrently, waits for the same shutdown.
        """
        if not self._started:
            return
        if self._shutdown is None:
            self._shutdown = asyncio.create_task(self._shut_down())
        await asyncio.shield(self._shutdown)

    async def run(self) -> None:
        """Run until ``stop()``, ``request_stop()``, SIGTERM or SIGINT, then shut down.

        If a loop or slot of the worker failed (which stops it), that error is raised
        after the shutdown, so a worker process ends with a failure, not a success.
        """
        if not self.enabled:
            logger.info("worker %s is disabled (WORKER_ENABLED=false); not running", self.worker_id)
            return
        owns_store = not self.store.started
        self._reset()
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.request_stop)
            except (NotImplementedError, RuntimeError, ValueError):
                continue  # not the main thread, or no signals on this platform
            installed.append(sig)
        try:
            await self._start_after_reset()
            await self._stopping.wait()
        finally:
            await self.stop()
            for sig in installed:
                loop.remove_signal_handler(sig)
            if owns_store:
                await self.store.close(within=self._close_wait())
        if self._failure is not None:
            raise self._failure

    async def drain(self) -> int:
        """Run every due job of this worker's types, including jobs they enqueue, and return.

        Returns the number of outcomes recorded. Jobs retried with a delay are left for
        later. Raises a database error met while claiming, DatabaseUnavailable when
        outcomes could not be written for a minute, or what made a slot of the worker
        fail; jobs it had claimed but not finished are put back to READY (or, if the
        database is gone, left to the reaper).
        """
        if self._started:
            raise RuntimeError("drain() needs a worker that is not running; stop() it first")
        await self.store.start()
        self._reset()
        before = self._processed
        self._start_slots()
        self._start_heartbeats()
        finished = False
        try:
            # False when a slot failed and stopped the worker: that is an error too.
            finished = await self._fetch_loop(drain=True)
        finally:
            self.request_stop()
            if not finished:
                # An error or a cancellation: stop the handlers rather than wait for them.
                for flight in self._running:
                    if not flight.is_thread:
                        flight.released = True
                        flight.task.cancel()
            released = [f.job for f in self._running if f.released]
            unstarted = [job for job, _ in self._buffer]
            self._buffer.clear()
            if released or unstarted:
                await _bounded(self._release(released + unstarted, "drain() stopped early"), 5.0)
            await asyncio.wait(self._slots, timeout=None if finished else 5.0)
            for slot in self._slots:
                slot.cancel()  # any still running after the bounded wait
            # The database may be gone: a bounded wait for the last outcomes, and what
            # cannot be written stays RUNNING for the reaper.
            unwritten = await self._writer.close(within=DRAIN_WRITE_WAIT)
            await self._stop_heartbeats()
            if self._room_announcement is not None:
                self._room_announcement.cancel()
        if self._failure is not None:
            raise self._failure
        if unwritten:
            raise DatabaseUnavailable(
                f"drain() ran jobs {[o.job.id for o in unwritten]} but could not record "
                f"their outcome within {DRAIN_WRITE_WAIT:.0f} s; they stay RUNNING until "
                "the reaper takes them back"
            )
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
                await self.store.close(within=self._close_wait())

    # -- state -----------------------------------------------------------------------

    def _reset(self) -> None:
        # Made here, not only in __init__, so that the events belong to the running loop.
        self._stopping = asyncio.Event()
        self._job_ready = asyncio.Event()  # the buffer has jobs (or: stopping)
        self._want_more = asyncio.Event()  # the buffer runs low or a slot freed
        self._wakeup = asyncio.Event()  # a notification came, or a known due time passed
        self._buffer: deque[tuple[Job, float]] = deque()  # (job, monotonic time claimed)
        self._running: set[_InFlight] = set()  # a set of runs: a job may be run twice
        self._slots: list[asyncio.Task[None]] = []
        self._background = []
        self._due_at: list[float] = []  # heap of epoch seconds when known jobs come due
        self._average_seconds: float | None = None
        self._prefetch_target = 0
        self._room_announcement: asyncio.Task[None] | None = None
        self._announce_again = False
        # Monotonic time before which a limited type that had nothing due is not claimed.
        self._limited_recheck_at: dict[str, float] = {}
        self._limited_first = True
        self._failure = None
        self._outcomes_written = 0
        # Every claim this worker holds, from its claim until its outcome is written or
        # it is put back: what its heartbeats tell the reaper it holds.
        self._held: dict[Claim, Job] = {}
        self._liveness = Liveness(
            self.store,
            self.worker_id,
            job_types=self.job_types,
            concurrency=self.concurrency,
            interval=self.heartbeat_interval.total_seconds(),
            stale_after=self.default_stale_after.total_seconds(),
            instance=self._instance,
            held=lambda: list(self._held.values()),
            on_lost=self._stop_runs_no_longer_owned,
            on_failure=self._outage.failure,
            on_recovery=self._outage.recovered,
        )
        self._probes = 0
        self._probe_waiting: tuple[str, asyncio.Event] | None = None
        self._shutdown = None
        self._writer = OutcomeWriter(
            self.store,
            self.loop_error_policy,
            on_failure=self._outage.failure,
            on_recovery=self._outage.recovered,
            on_written=self._written,
        )

    def _start_slots(self) -> None:
        self._writer.start()
        self._slots = [
            asyncio.create_task(self._slot(), name=f"pqrun-slot-{n}")
            for n in range(self.concurrency)
        ]
        for slot in self._slots:
            slot.add_done_callback(self._loop_ended)

    def _measured(self, seconds: float) -> None:
        """Fold a handler's duration into the average, and size the prefetch from it."""
        if self._average_seconds is None:
            self._average_seconds = seconds
        else:
            self._average_seconds += DURATION_SMOOTHING * (seconds - self._average_seconds)
        if self.prefetch_limit:
            # About PREFETCH_SECONDS of work beyond the free slots, no more.
            per_slot = PREFETCH_SECONDS / max(self._average_seconds, 1e-6)
            self._prefetch_target = min(self.prefetch_limit, int(self.concurrency * per_slot))

    def _claim_size(self) -> int:
        prefetch = self._prefetch_target
        if len(self._buffer) > prefetch // 2:
            return 0  # enough in hand; claim again when it runs low
        return self.concurrency + prefetch - len(self._buffer) - len(self._running)

    # -- the fetch loop --------------------------------------------------------------

    async def _fetch_loop(self, *, drain: bool) -> bool:
        """Claim jobs until stopped (False), or, draining, until none are due (True)."""
        idle_polls = 0
        errors = 0
        while not self._stopping.is_set():
            self._want_more.clear()
            want = self._claim_size()
            if want <= 0:
                await self._want_more.wait()
                continue
            self._wakeup.clear()
            written_before = self._outcomes_written
            try:
                jobs = await self._claim(want, drain=drain)
            except Exception as exc:
                if drain:
                    raise
                errors += 1
                self._outage.failure("fetch", "claiming jobs", exc)
                await self._sleep(self.loop_error_policy.next_sleep(errors))
                continue
            if errors or "fetch" in self._outage.failing:
                errors = 0
                self._outage.recovered("fetch")
            if jobs:
                idle_polls = 0
                continue
            if drain:
                if self._buffer or self._running:
                    await self._want_more.wait()  # a finishing job may have enqueued more
                    continue
                if self._limited_recheck_at:
                    # Due jobs of a limited type wait for its rate limit, or another
                    # worker is claiming them: due work all the same.
                    soonest = min(self._limited_recheck_at.values()) - time.monotonic()
                    await self._sleep(max(soonest, 0.0))
                    continue
                if not self._writer.idle or self._outcomes_written != written_before:
                    # An outcome written during (or after) that claim may have made a
                    # retry due now: write everything, then look once more.
                    try:
                        await asyncio.wait_for(self._writer.flush(), DRAIN_WRITE_WAIT)
                    except TimeoutError:
                        raise DatabaseUnavailable(
                            f"drain() could not record outcomes for {DRAIN_WRITE_WAIT:.0f} s"
                        ) from None
                    continue
                return True
            idle_polls += 1
            await self._idle_sleep(idle_polls)
        return False

    async def _claim(self, want: int, *, drain: bool = False) -> list[Job]:
        """Claim up to ``want`` jobs into the buffer (and return them): limited types
        within their limits, then the rest."""
        jobs: list[Job] = []
        if not self._limited:
            jobs = await self.store.pickup_batch(self.worker_id, self.job_types, want)
            self._buffered(jobs)
            return jobs
        # With fewer free slots than due jobs, the group claimed first wins them; take
        # turns, so that neither the limited types nor the others wait for the other
        # group to run dry. (Within a round, the buffer runs jobs by priority.)
        limited_first = self._limited_first or not self._unlimited_types
        self._limited_first = not self._limited_first
        try:
            if limited_first:
                await self._claim_limited(want, jobs, drain=drain)
                want -= len(jobs)
            if self._unlimited_types and want > 0:
                jobs += await self.store.pickup_batch(self.worker_id, self._unlimited_types, want)
            if not limited_first:
                await self._claim_limited(want - len(jobs), jobs, drain=drain)
        finally:
            # Also when a later claim failed: what was claimed is run, not stranded.
            self._buffered(jobs)
        return jobs

    async def _claim_limited(self, want: int, jobs: list[Job], *, drain: bool) -> None:
        # A claimed job of a limited type counts against its limit while it waits in the
        # buffer, so these are claimed for the free slots plus the prefetch (about 50 ms
        # of work at the handlers' speed, none for slow handlers), not counting slots
        # promised to limited jobs already waiting. Other prefetched jobs run in
        # priority order with them (see _buffered).
        waiting = sum(1 for job, _ in self._buffer if job.job_type in self._limited)
        free = self.concurrency + self._prefetch_target - len(self._running) - waiting - len(jobs)
        now = time.monotonic()
        for job_type, handler in self._limited.items():
            if free <= 0 or want <= 0:
                return
            recheck_at = self._limited_recheck_at.get(job_type)
            if recheck_at is not None:
                if recheck_at > now:
                    continue  # the idle sleep (or drain) ends by then
                del self._limited_recheck_at[job_type]
            claimed, retry_in = await self.store.pickup_limited(
                self.worker_id, job_type, handler, min(free, want)
            )
            if retry_in is not None:
                # Its rate limit is used up with jobs due, or another worker holds its
                # claim lock: look again then (a duration: the clocks may differ).
                self._limited_recheck_at[job_type] = now + max(retry_in, 0.0)
            elif not claimed and not drain and self._buffer:
                # A limited claim is a transaction of its own. While this worker is busy
                # with other jobs, a type that had nothing due is looked at a few times
                # a second, not at every claim. (An idle worker, or drain(), looks at
                # every type each time.)
                self._limited_recheck_at[job_type] = now + LIMITED_RECHECK_SECONDS
            jobs.extend(claimed)
            free -= len(claimed)
            want -= len(claimed)

    def _buffered(self, jobs: list[Job]) -> None:
        """Put claimed jobs in the buffer for the slots."""
        if not jobs:
            return
        for job in jobs:
            self._held[(job.id, job.lease_id)] = job
        claimed_at = time.monotonic()
        if self._limited and any(job.job_type in self._limited for job in jobs):
            # Jobs of limited types hold a slot of their limit from their claim: run
            # everything in priority order, so they wait behind no job of lower priority.
            merged = [*self._buffer, *((job, claimed_at) for job in jobs)]
            merged.sort(key=lambda entry: (-entry[0].priority, entry[0].run_after, entry[0].id))
            self._buffer = deque(merged)
        else:
            self._buffer.extend((job, claimed_at) for job in jobs)
        self._job_ready.set()

    async def _idle_sleep(self, idle_polls: int) -> None:
        """Sleep per the idle policy, but no later than the next known due time."""
        seconds = self.idle_policy.next_sleep(idle_polls)
        now = time.time()
        while self._due_at and self._due_at[0] <= now:
            heapq.heappop(self._due_at)
        if self._due_at:
            seconds = min(seconds, self._due_at[0] - now)
        if self._limited_recheck_at:
            # A limited type skipped in the last claim is looked at when its pause ends
            # (a pause already over is dropped: the next claim looks at that type).
            monotonic = time.monotonic()
            self._limited_recheck_at = {
                t: at for t, at in self._limited_recheck_at.items() if at > monotonic
            }
            if self._limited_recheck_at:
                soonest = min(self._limited_recheck_at.values()) - monotonic
                seconds = min(seconds, soonest)
        with suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout=max(seconds, 0.0))

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when a stop is requested."""
        with suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    def _expect_due(self, epoch: float) -> None:
        heapq.heappush(self._due_at, epoch)
        if len(self._due_at) > MAX_DUE_TIMES:
            self._due_at = heapq.nsmallest(MAX_DUE_TIMES // 2, self._due_at)
        self._wakeup.set()  # the idle sleep recomputes its deadline

    # -- slots: running handlers -----------------------------------------------------

    async def _slot(self) -> None:
        last_yield = time.monotonic()
        while (claimed := await self._take()) is not None:
            job, claimed_at = claimed
            if (job.id, job.lease_id) not in self._held:
                continue  # found no longer ours (cancelled, taken back) while being taken
            if await self._waited_too_long(job, claimed_at):
                continue
            task = asyncio.current_task()
            assert task is not None
            flight = _InFlight(job, task, is_thread=not self.handler_for(job.job_type).is_async)
            self._running.add(flight)
            for observer in self.store.observers:
                _tell(observer.started, job)
            try:
                if tracing.AVAILABLE and tracing.recording():
                    outcome = await self._run_traced(flight)
                else:
                    outcome = await self._run_handler(flight)
            except Exception as exc:  # a fault of pqrun's own: still record something
                logger.exception("job %s: the worker failed around its handler", job.id)
                outcome = Outcome(
                    job=job,
                    duration_ms=0,
                    error=f"the worker failed around the handler: {describe_exception(exc)}",
                    retry_after=self._retry_delay(job),
                )
            finally:
                self._running.discard(flight)
                if len(self._buffer) <= self._prefetch_target // 2:
                    self._want_more.set()  # time to claim more (or, draining, to look again)
            if flight.released:
                logger.warning(
                    "job %s finished after shutdown had put it back to READY; outcome dropped",
                    job.id,
                    extra={"job_id": job.id},
                )
                continue
            flight.answered = True
            if outcome is None:
                # Cancelled, or taken back: the row is someone else's to move now.
                self._held.pop((job.id, job.lease_id), None)
                continue
            await self._writer.submit(outcome)
            # A handler that never awaits would let this slot run the whole buffer before
            # the fetch loop and the writer get a turn: claiming, running and writing
            # overlap only if slots yield now and then.
            now = time.monotonic()
            if now - last_yield >= YIELD_EVERY:
                last_yield = now
                await asyncio.sleep(0)

    async def _take(self) -> tuple[Job, float] | None:
        while not self._stopping.is_set():
            if self._buffer:
                claimed = self._buffer.popleft()
                if len(self._buffer) <= self._prefetch_target // 2 and not self._want_more.is_set():
                    # The buffer runs low: let the fetch loop send its claim now, so that
                    # it overlaps with running what is left.
                    self._want_more.set()
                    await asyncio.sleep(0)
                return claimed
            self._job_ready.clear()
            self._want_more.set()
            await self._job_ready.wait()
        return None

    async def _waited_too_long(self, job: Job, claimed_at: float) -> bool:
        """Give back a job that waited in the buffer half its deadline or stale period."""
        limit = job.timeout_seconds or self.default_stale_after.total_seconds()
        if time.monotonic() - claimed_at < limit / 2:
            return False
        await self._release([job], "waited too long in the worker's buffer; put back")
        return True

    async def _run_traced(self, flight: _InFlight) -> Outcome | None:
        """Run the handler inside the run's span, a child of the enqueue's (tracing.py)."""
        with tracing.run_span(flight.job) as span:
            outcome = await self._run_handler(flight)
            if outcome is None:
                tracing.record_outcome(span, "cancelled", "cancelled while running")
            elif outcome.result_json is not None:
                tracing.record_outcome(span, "done", "")
            elif outcome.snooze_after is not None:
                tracing.record_outcome(span, "snoozed", "")
            else:
                tracing.record_outcome(
                    span, "failed" if outcome.terminal else "error", outcome.error
                )
            return outcome

    async def _run_handler(self, flight: _InFlight) -> Outcome | None:
        """Run the job's handler; None when store.cancel() stopped it."""
        job = flight.job
        handler = self.handler_for(job.job_type)
        ctx = JobContext(job=job, store=self.store, worker_id=self.worker_id)
        started = time.monotonic()
        outcome = Outcome(job=job, duration_ms=0)
        deadline = asyncio.timeout(job.timeout_seconds)  # None: no deadline
        try:
            return await self._handle(flight, handler, ctx, deadline, outcome, started)
        finally:
            # A cancel requested for this run that the handler swallowed must not stay
            # counted on the slot's task: it would end the slot at the next one.
            current = asyncio.current_task()
            if flight.cancel_requested and not flight.cancel_consumed and current:
                flight.cancel_consumed = True
                current.uncancel()

    async def _handle(
        self,
        flight: _InFlight,
        handler: Handler,
        ctx: JobContext,
        deadline: asyncio.Timeout,
        outcome: Outcome,
        started: float,
    ) -> Outcome | None:
        job = flight.job
        try:
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
            outcome.retry_after = self._retry_delay(job)
        except BaseException as exc:
            current = asyncio.current_task()
            if isinstance(exc, asyncio.CancelledError) and current and current.cancelling():
                # Ours: store.cancel() (the slot goes on with its next job), or shutdown.
                if flight.cancel_requested and not flight.cancel_consumed:
                    flight.cancel_consumed = True
                    remaining = current.uncancel()
                else:
                    remaining = current.cancelling()
                if flight.cancel_requested and remaining == 0:
                    elapsed = time.monotonic() - started
                    logger.info(
                        "job %s (%s) was cancelled while running; its handler was stopped",
                        job.id,
                        job.job_type,
                        extra={
                            "job_id": job.id,
                            "job_type": job.job_type,
                            "attempt": job.attempts,
                            "duration_ms": min(round(elapsed * 1000), INT32_MAX),
                            "outcome": "cancelled",
                        },
                    )
                    for observer in self.store.observers:
                        _tell(observer.finished, job, "cancelled", elapsed)
                    return None
                raise
            if deadline.expired():
                outcome.error = (
                    f"timed out: the handler ran past the job's timeout_seconds "
                    f"({job.timeout_seconds} s) and was cancelled"
                )
            else:
                # Any other exception, SystemExit and the handler's own CancelledError
                # too, is the job's failure, not the worker's.
                outcome.error = describe_exception(exc)
            outcome.retry_after = self._retry_delay(job)
        else:
            try:
                outcome.result_json = encode_json(
                    value, f"the value returned by the {job.job_type!r} handler"
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
        self._measured(elapsed)
        return outcome

    def _retry_delay(self, job: Job) -> timedelta:
        try:
            return self.backoff.retry_delay(job.attempts)
        except Exception:
            logger.exception("the backoff policy failed for job %s; retrying in 1 minute", job.id)
            return timedelta(minutes=1)

    def _written(self, outcome: Outcome, status: JobStatus | None) -> None:
        """Called by the outcome writer once an outcome is committed (or found moot)."""
        self._outcomes_written += 1
        if status is not None:
            self._processed += 1
        job = outcome.job
        self._held.pop((job.id, job.lease_id), None)
        if status is JobStatus.READY and outcome.retry_after is not None:
            self._expect_due(time.time() + outcome.retry_after.total_seconds())
        if status is not None and job.job_type in self._limited:
            self._room_freed(job.job_type)
        extra = {
            "job_id": job.id,
            "job_type": job.job_type,
            "attempt": job.attempts,
            "duration_ms": outcome.duration_ms,
            "outcome": status.value if status else "ignored",
        }
        if self.store.observers:
            if status is None:
                kind = "ignored"
            elif status is JobStatus.DONE:
                kind = "done"
            elif status is JobStatus.FAILED:
                kind = "failed"
            elif outcome.snooze_after is not None:
                kind = "snoozed"
            else:
                kind = "retried"
            for observer in self.store.observers:
                _tell(observer.finished, job, kind, outcome.duration_ms / 1000)
        headline = outcome.error.split("\n", 1)[0]
        if status is None and outcome.abandoned is not None:
            logger.error(
                "job %s (%s): attempt %s by %s could not be recorded (%s); it stays RUNNING "
                "until the reaper takes it back. The run came to: %s",
                job.id,
                job.job_type,
                job.attempts,
                self.worker_id,
                outcome.abandoned,
                headline or "a result",
                extra=extra,
            )
        elif status is None:
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
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "job %s (%s) done in %d ms",
                    job.id,
                    job.job_type,
                    outcome.duration_ms,
                    extra=extra,
                )
        elif status is JobStatus.READY and outcome.snooze_after is not None:
            logger.info(
                "job %s (%s) snoozed for %s",
                job.id,
                job.job_type,
                outcome.snooze_after,
                extra=extra,
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

    def _room_freed(self, job_type: str) -> None:
        """A limited job finished: look for more here, and tell the other workers."""
        self._limited_recheck_at.pop(job_type, None)
        self._wakeup.set()
        self._want_more.set()
        if self._room_announcement is None or self._room_announcement.done():
            self._room_announcement = asyncio.ensure_future(self._announce_room())
        else:
            self._announce_again = True  # room freed after that one was sent

    async def _announce_room(self) -> None:
        # Other workers would otherwise see the freed room only at their next idle poll.
        # At most one notification per LIMITED_RECHECK_SECONDS: rooms freed meanwhile
        # share the next one, so a fast limited type does not cost a NOTIFY per batch.
        while True:
            self._announce_again = False
            try:
                await self.store.wake_workers()
            except Exception as exc:  # they will see it at their next poll
                logger.debug("could not wake other workers: %s", exc)
            await self._sleep(LIMITED_RECHECK_SECONDS)
            if not self._announce_again or self._stopping.is_set():
                return

    # -- listener and reaper ---------------------------------------------------------

    def _on_notification(self, payload: str) -> None:
        """A notification on the queue's channel: a hint, never an order.

        Any role that can connect may NOTIFY on the channel, so nothing heard here moves
        a job or stops a run by itself: a wake-up only makes the worker look sooner, and
        a cancel notice only makes it read that job's row (docs/security.md).
        """
        if not payload:
            self._wakeup.set()
        elif payload.startswith("probe:"):
            waiting = self._probe_waiting
            if waiting is not None and waiting[0] == payload:
                waiting[1].set()
        elif payload.startswith("cancel:"):
            with suppress(ValueError):
                job_id = int(payload.removeprefix("cancel:"))
                if any(job_id == held_id for held_id, _lease in self._held):
                    self._liveness.check_soon(job_id)
        elif payload.startswith("finished:"):
            return  # for store.wait()
        else:
            with suppress(ValueError, OverflowError):
                due = float(payload)
                if math.isfinite(due):
                    self._expect_due(due)

    async def _listen_loop(self) -> None:
        """Keep a LISTEN connection open; reconnect when it drops. Polling covers the gaps."""
        failures = 0
        while not self._stopping.is_set():
            try:
                conn = await self.store.listen(self._on_notification)
            except Exception as exc:
                failures += 1
                if failures == 1:
                    logger.warning(
                        "worker %s: cannot LISTEN for new jobs (%s: %s); polling until it can",
                        self.worker_id,
                        type(exc).__name__,
                        exc,
                    )
                await self._sleep(self.loop_error_policy.next_sleep(failures))
                continue
            failures = 0
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
            if conn.is_closed():  # dropped before the callback was in place
                lost.set()
            self._wakeup.set()  # jobs may have come while nobody listened
            try:
                await self._watch_listener(conn, lost)
            finally:
                # terminate(), not close(): close() waits on a peer that may be gone.
                conn.terminate()

    async def _watch_listener(self, conn: Any, lost: asyncio.Event) -> None:
        """Return when stopping or when the LISTEN connection is gone or stops hearing.

        A connection can die without a word (a failover, a NAT entry dropped): the TCP
        socket stays open and no notification ever comes. So now and then the listener
        notifies its own channel and must hear that back within a few seconds.
        """
        stop_waiter = asyncio.ensure_future(self._stopping.wait())
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
                if not await self._hears_itself(conn):
                    logger.warning(
                        "worker %s: the LISTEN connection stopped hearing notifications; "
                        "reconnecting",
                        self.worker_id,
                    )
                    return
        finally:
            stop_waiter.cancel()
            lost_waiter.cancel()

    def _start_heartbeats(self) -> None:
        self._liveness.start().add_done_callback(self._loop_ended)

    async def _stop_heartbeats(self, within: float = 1.0) -> None:
        """Heartbeats go on through a shutdown's grace period; they end with it."""
        await self._liveness.stop(within)

    def _stop_runs_no_longer_owned(self, lost: set[Claim]) -> None:
        """Stop runs whose claim the row says is no longer ours, and drop them unstarted.

        Cancelled, or taken back by the reaper: whatever they answer would be refused.
        """
        if any((job.id, job.lease_id) in lost for job, _ in self._buffer):
            self._buffer = deque(
                (job, at) for job, at in self._buffer if (job.id, job.lease_id) not in lost
            )
        running = {(f.job.id, f.job.lease_id) for f in self._running}
        for claim in lost - running:
            self._held.pop(claim, None)  # not started: nothing more will come of it
        for flight in list(self._running):
            # A slot is in _running only while it awaits the handler, so the
            # cancellation lands there. A thread cannot be stopped: it runs to its end.
            if (flight.job.id, flight.job.lease_id) in lost and not flight.is_thread:
                if not flight.cancel_requested:
                    logger.warning(
                        "job %s is no longer this worker's (cancelled or taken back); "
                        "stopping its handler",
                        flight.job.id,
                        extra={"job_id": flight.job.id, "job_type": flight.job.job_type},
                    )
                flight.cancel_requested = True
                flight.task.cancel()

    async def _hears_itself(self, conn: Any) -> bool:
        """Notify our own channel on the LISTEN connection; True if it comes back."""
        self._probes += 1
        payload = f"probe:{self.worker_id}:{self._probes}"
        heard = asyncio.Event()
        self._probe_waiting = (payload, heard)
        try:
            await asyncio.wait_for(
                conn.execute("SELECT pg_notify($1, $2)", self.store.channel, payload), 5
            )
            await asyncio.wait_for(heard.wait(), 5)
        except Exception:
            return False
        finally:
            self._probe_waiting = None
        return True

    async def _reap_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.store.reap_stale(
                    self.default_stale_after,
                    reachable_for=self.heartbeat_interval * REAP_AFTER_HEARTBEATS,
                )
            except Exception as exc:
                self._outage.failure("reaper", "reaping stale jobs", exc)
            else:
                self._outage.recovered("reaper")
            await self._sleep(self.reap_interval.total_seconds())

    async def _prune_loop(self) -> None:
        """Delete old finished jobs every prune interval, a few small batches at a time."""
        while not self._stopping.is_set():
            try:
                pruned = await self.store.prune(
                    self.keep_done,
                    self.keep_failed,
                    batch_size=PRUNE_BATCH_SIZE,
                    max_batches=PRUNE_BATCHES_PER_STEP,
                )
            except asyncpg.InsufficientPrivilegeError as exc:
                logger.error(
                    "worker %s cannot delete old jobs (%s); finished jobs are kept. GRANT "
                    "DELETE ON jobs to this role, or set WORKER_PRUNE_ENABLED=false and "
                    "prune with `pqrun prune` as a role that may",
                    self.worker_id,
                    exc,
                )
                return
            except Exception as exc:
                self._outage.failure("pruner", "deleting old jobs", exc)
                await self._sleep(self.prune_interval.total_seconds())
                continue
            self._outage.recovered("pruner")
            if pruned.total:
                logger.info(
                    "worker %s pruned %d DONE, %d FAILED, %d CANCELLED jobs",
                    self.worker_id,
                    pruned.done,
                    pruned.failed,
                    pruned.cancelled,
                )
            # A backlog goes in steps with pauses, so pruning never crowds out the work.
            pause = PRUNE_PAUSE if pruned.more else self.prune_interval.total_seconds()
            await self._sleep(pause)

    # -- shutdown --------------------------------------------------------------------

    async def _schedule_loop(self) -> None:
        """Declare this worker's schedules, then enqueue each tick when it comes due."""
        errors = 0
        declared_at: float | None = None
        while not self._stopping.is_set():
            try:
                now = time.monotonic()
                if declared_at is None or now - declared_at >= SCHEDULE_REDECLARE_EVERY:
                    # Again now and then: declared_at tells which schedules some running
                    # worker still declares, and a removed row comes back.
                    await self.store.declare_schedules(self.schedules)
                    declared_at = now
                fired, until_next = await self.store.fire_due_schedules(self.schedules)
            except Exception as exc:
                errors += 1
                self._outage.failure("schedules", "firing schedules", exc)
                await self._sleep(self.loop_error_policy.next_sleep(errors))
                continue
            if errors:
                errors = 0
                self._outage.recovered("schedules")
            if fired:
                logger.debug("worker %s enqueued scheduled jobs %s", self.worker_id, fired)
            # A due schedule another worker holds locked is fired by it: look again soon.
            await self._sleep(min(max(until_next, SCHEDULE_MIN_SLEEP), SCHEDULE_MAX_SLEEP))

    async def _release(self, jobs: list[Job], why: str) -> None:
        reason = f"{why} (worker {self.worker_id}); put back to READY"
        for job in jobs:
            # Put back, or (when that fails) left to the reaper: not ours to run either way.
            self._held.pop((job.id, job.lease_id), None)
        try:
            released = await self.store.release(jobs, reason)
        except Exception as exc:
            logger.error(
                "worker %s could not put jobs %s back to READY (%s: %s); the reaper will "
                "recover them once their heartbeat is stale",
                self.worker_id,
                [j.id for j in jobs],
                type(exc).__name__,
                exc,
            )
            return
        logger.warning(
            "worker %s put %d jobs back to READY: %s", self.worker_id, len(released), why
        )

    async def _leave(self) -> None:
        try:
            await self.store.leave(self.worker_id, instance=self._instance)
        except Exception as exc:
            logger.info(
                "worker %s could not leave the registry (%s); the reaper removes it once "
                "its heartbeat is stale",
                self.worker_id,
                type(exc).__name__,
            )

    async def _shut_down(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.shutdown_timeout.total_seconds()
        # Time kept back from the grace period to put unfinished jobs back to READY.
        reserve = min(1.0, self.shutdown_timeout.total_seconds() / 4)

        def remaining() -> float:
            return max(0.0, deadline - loop.time())

        self.request_stop()
        try:
            # Jobs claimed but not started go back first, so that other workers can take
            # them while this one finishes; a claim under way when the stop came adds to
            # the buffer once more, and those go back after the loops have ended.
            for attempt in range(2):
                if attempt == 1 and self._background:
                    await asyncio.wait(self._background, timeout=min(remaining(), 5.0))
                    for task in self._background:
                        task.cancel()  # a claim stuck on a dead connection: the reaper
                if self._buffer:
                    unstarted = [job for job, _ in self._buffer]
                    self._buffer.clear()
                    await _bounded(
                        self._release(unstarted, "claimed but not started at shutdown"),
                        remaining(),
                    )
            if self._running:
                logger.info(
                    "worker %s stopping: waiting up to %s for %d running jobs",
                    self.worker_id,
                    self.shutdown_grace,
                    len(self._running),
                )
                grace = min(self.shutdown_grace.total_seconds(), remaining() - reserve)
                if isinstance(self._failure, WorkerIdInUse):
                    # Its claims are in no heartbeat: the reaper may take them any time.
                    grace = 0
                if grace > 0:
                    await asyncio.wait(self._slots, timeout=grace)
            # Handlers still running are cancelled, and the jobs of those that stopped
            # are put back at once. A handler that goes on (it catches CancelledError,
            # or cleans up slowly), like a plain function in a thread, which cannot be
            # stopped, keeps its job RUNNING: put back, the job would run elsewhere while
            # this run goes on. Its outcome is written if it returns before the deadline.
            interrupted = [f for f in self._running if not f.is_thread]
            for flight in interrupted:
                flight.released = True  # whatever it answers now is not written
                flight.task.cancel()
            if interrupted:
                await asyncio.wait(
                    {f.task for f in interrupted},
                    timeout=max(remaining() - reserve / 2, 0.001),
                )
                going_on = [f for f in interrupted if f in self._running]
                for flight in going_on:
                    flight.released = False
                stopped = [f.job for f in interrupted if f not in self._running]
                if stopped:
                    await _bounded(
                        self._release(
                            stopped, "interrupted: the worker shut down before the handler finished"
                        ),
                        remaining(),
                    )
            if self._slots and remaining() > 0:
                await asyncio.wait(self._slots, timeout=remaining())
            if interrupted:
                # Handlers that went on but have ended since without an answer (they
                # re-raised the cancellation): their jobs go back now, not at the reaper.
                silent = [f.job for f in going_on if f.task.done() and not f.answered]
                if silent:
                    await _bounded(
                        self._release(silent, "interrupted: the worker shut down"), remaining()
                    )
            stuck = [f for f in self._running if not f.task.done()]
            if stuck:
                logger.error(
                    "worker %s: %d handlers did not end within shutdown_timeout (%s): jobs "
                    "%s. A handler that catches CancelledError, or a plain function in a "
                    "thread, keeps running; its job is left RUNNING, and goes back once this "
                    "worker's heartbeat is stale",
                    self.worker_id,
                    len(stuck),
                    self.shutdown_timeout,
                    [f.job.id for f in stuck],
                )
            unwritten = await self._writer.close(within=remaining())
            if unwritten:
                logger.error(
                    "worker %s: could not record the outcome of jobs %s before "
                    "shutdown_timeout; they stay RUNNING until the reaper takes them back",
                    self.worker_id,
                    [o.job.id for o in unwritten],
                )
            await self._stop_heartbeats(remaining())
            if not self._running:  # a handler still running keeps this worker registered
                await _bounded(self._leave(), remaining())
        finally:
            for task in [*self._background, *self._slots]:
                task.cancel()
            await self._liveness.stop(0)
            if self._room_announcement is not None:
                # Other workers see freed room at their next poll; this one is gone.
                self._room_announcement.cancel()
            self._started = False
            await self._stop_metrics()
            logger.info("worker %s stopped", self.worker_id)


async def _bounded(step: Awaitable[Any], seconds: float) -> None:
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
