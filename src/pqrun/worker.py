"""Worker: claims due jobs for the job types it has handlers for and runs them.

Inside a worker (the parts are in ``pqrun._worker``):

- the **fetcher** claims jobs in one statement per batch (``FOR UPDATE SKIP LOCKED
  LIMIT n``) into a local buffer: up to the free slots, plus a prefetch sized to about
  50 ms of work at the handlers' measured speed (none for slow handlers);
- the **executor**'s ``concurrency`` slots take jobs from the buffer and run their
  handlers;
- the **outcome writer** records what each run came to, many jobs per statement;
- a **listener** (LISTEN on the store's channel) wakes the fetcher when jobs are
  inserted, and tells it when delayed jobs come due; idle polling is the fallback;
- a **heartbeat** keeps the worker in the registry and its jobs alive, and the **reaper**
  takes back jobs whose heartbeat went stale (one reaper at a time).

See docs/state-machine.md for the moves and docs/configuration.md for the settings.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from ._worker.loops import OutageLog, task_name
from ._worker.parts import WorkerParts
from ._worker.settings import WorkerSettings, default_worker_id, encodable_schedules
from ._worker.shutdown import abandon, drain_unwritten, finish_drain, shut_down
from ._worker.store_protocol import WorkerStore, check_store
from .errors import DatabaseUnavailable, UnknownJobType
from .handlers import Handler, Handlers, as_handlers
from .policies import BackoffPolicy, IdlePollPolicy, LoopErrorPolicy
from .schedules import Schedule

if TYPE_CHECKING:
    from .metrics import MetricsServer
    from .store import PgJobStore

__all__ = ["Worker", "WorkerStore", "default_worker_id"]

logger = logging.getLogger("pqrun")


# Worker attributes that are copies of its frozen settings (``enabled`` and the metrics
# address are read from the attributes themselves, so they may still be set).
_FROZEN_SETTINGS = frozenset(
    {
        "handlers",
        "job_types",
        "worker_id",
        "enable_reaper",
        "concurrency",
        "prefetch_limit",
        "listen",
        "default_stale_after",
        "reap_interval",
        "heartbeat_interval",
        "shutdown_grace",
        "shutdown_timeout",
        "enable_pruning",
        "prune_interval",
        "keep_done",
        "keep_failed",
        "delete_done",
        "enable_vacuum",
        "backoff",
        "idle_policy",
        "loop_error_policy",
        "schedules",
        "settings",
    }
)


class Worker:
    """Runs jobs of the types in ``handlers``: ``{"job_type": async_handler, ...}``.

    Arguments left as None come from the environment (``WORKER_CONCURRENCY`` and the
    other ``WORKER_*`` variables of docs/configuration.md), else from its defaults.

    Upkeep (docs/operations.md): one worker at a time deletes DONE jobs older than ``keep_done``
    (1 day; ``delete_done=True``: as they complete) and FAILED/CANCELLED ones older than
    ``keep_failed`` (7 days), and workers vacuum the jobs table once dead rows pile up
    (``enable_pruning=False``, ``enable_vacuum=False`` to leave either to others).

    Use it as ``FastAPI(lifespan=worker.lifespan)``, or ``await worker.run()`` in a worker
    process (stops on SIGTERM/SIGINT or ``worker.stop()``), or ``await worker.drain()`` to
    run every due job and return.
    """

    _failure: BaseException | None

    def __init__(
        self,
        store: WorkerStore,
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
        delete_done: bool | None = None,
        enable_vacuum: bool | None = None,
        metrics_port: int | None = None,
        metrics_host: str = "0.0.0.0",
    ) -> None:
        check_store(store)
        # A double given instead stands in for the PgJobStore here and in ctx.store.
        self.store: PgJobStore = cast("PgJobStore", store)
        self.settings = settings = WorkerSettings.build(
            as_handlers(handlers, allow_empty=True),
            concurrency=concurrency,
            enable_reaper=enable_reaper,
            backoff=backoff,
            idle_policy=idle_policy,
            loop_error_policy=loop_error_policy,
            reap_stale_every_seconds=reap_stale_every_seconds,
            default_stale_after=default_stale_after,
            worker_id=worker_id,
            shutdown_grace=shutdown_grace,
            shutdown_timeout=shutdown_timeout,
            enabled=enabled,
            prefetch=prefetch,
            listen=listen,
            schedules=encodable_schedules(schedules, store),
            enable_pruning=enable_pruning,
            prune_every_seconds=prune_every_seconds,
            keep_done=keep_done,
            keep_failed=keep_failed,
            delete_done=delete_done,
            enable_vacuum=enable_vacuum,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
        )
        # The settings, as attributes of their own (read them; the settings are frozen).
        self.handlers: dict[str, Handler] = settings.handlers
        self.job_types = settings.job_types
        self.worker_id = settings.worker_id
        self.enabled = settings.enabled
        self.enable_reaper = settings.enable_reaper
        self.concurrency = settings.concurrency
        self.prefetch_limit = settings.prefetch_limit
        self.listen = settings.listen
        #: Where the worker serves Prometheus metrics while it runs (None: it does not).
        self.metrics_port: int | None = settings.metrics_port
        self.metrics_host = settings.metrics_host
        self.default_stale_after = settings.default_stale_after
        self.reap_interval = settings.reap_interval
        self.heartbeat_interval = settings.heartbeat_interval
        self.shutdown_grace = settings.shutdown_grace
        self.shutdown_timeout = settings.shutdown_timeout
        self.enable_pruning, self.prune_interval = settings.enable_pruning, settings.prune_interval
        self.keep_done, self.keep_failed = settings.keep_done, settings.keep_failed
        self.delete_done = settings.delete_done
        self.enable_vacuum = settings.enable_vacuum
        self.backoff = settings.backoff
        self.idle_policy = settings.idle_policy
        self.loop_error_policy = settings.loop_error_policy
        self.schedules = list(settings.schedules)
        self._built = True

        for job_type, handler in self.handlers.items():
            if handler.payload_model is not None:
                store.register_payload_model(job_type, handler.payload_model)
        self._metrics_server: MetricsServer | None = None
        if self.metrics_port is not None:
            from .metrics import instrument

            instrument(self.store)
        store.want_connections(self.concurrency)

        # Observers are read at each failure: metrics may be attached after the worker.
        self._outage = OutageLog(self.worker_id, lambda: self.store.observers)
        # This Worker object's token in job_workers, the same across its runs and drains:
        # another live worker with the same worker_id has another one, and is refused.
        self._instance = secrets.token_hex(8)
        self._started = False
        self._shutdown: asyncio.Task[None] | None = None
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
        if self._parts.life.stopping.is_set():
            return
        self._parts.start_slots()
        self._parts.start_heartbeats()
        self._parts.start_loops()
        logger.info(
            "worker %s started: job types %s, concurrency %d",
            self.worker_id,
            ", ".join(self.job_types),
            self.concurrency,
        )

    def _close_wait(self) -> float:
        """How long closing the store may wait for connections still in use."""
        # A handler that ignored cancellation may hold one for ever: do not wait on it.
        return 1.0 if self._parts.registry.running else 10.0

    async def _open_store(self) -> None:
        try:
            await self.store.start()
        except DatabaseUnavailable as exc:
            self._outage.failure("fetch", "starting", exc, operation="start")

    def _loop_ended(self, parts: WorkerParts, task: asyncio.Task[Any]) -> None:
        """A part of the worker must not die quietly: log it and stop the worker."""
        if parts is not self._parts:
            # A task of an earlier run (a handler that went on past its shutdown): that
            # run is over, and the one going on now must not stop for it.
            if not task.cancelled() and task.exception() is not None:
                logger.error(
                    "worker %s: %s of an earlier run failed",
                    self.worker_id,
                    task.get_name(),
                    exc_info=task.exception(),
                )
            return
        if task.cancelled():
            if not self._parts.life.stopping.is_set():
                logger.error(
                    "worker %s: %s was cancelled unexpectedly; stopping the worker",
                    self.worker_id,
                    task.get_name(),
                )
                self._failure = self._failure or asyncio.CancelledError(task.get_name())
                self._stop_for_failure()
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
        self._stop_for_failure()

    def _stop_for_failure(self) -> None:
        self.request_stop()
        if self._started and self._shutdown is None:
            # Under start() or a lifespan nobody else would notice: shut down for real.
            self._shutdown = asyncio.create_task(
                self._shut_down(), name=task_name(self.worker_id, "shutdown")
            )

    def request_stop(self) -> None:
        """Ask a running worker to stop, without waiting (safe from a signal handler)."""
        self._parts.request_stop()

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
            self._shutdown = asyncio.create_task(
                self._shut_down(), name=task_name(self.worker_id, "shutdown")
            )
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
            await self._parts.life.stopping.wait()
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
        if not self.handlers:
            raise RuntimeError("drain() needs a worker with handlers: this one has none")
        await self.store.start()
        self._reset()
        parts = self._parts
        await parts.start_drain()
        finished = False
        try:
            # False when a slot failed and stopped the worker: that is an error too.
            finished = await parts.fetcher.run(drain=True)
        finally:
            unwritten = await finish_drain(parts, finished)
        if self._failure is not None:
            raise self._failure
        if unwritten:
            raise drain_unwritten(unwritten)
        return parts.processed

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

    # -- internals -------------------------------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        # The settings are checked once and frozen; the components read them there, so
        # a copy changed afterwards would be silently ignored. Say so instead.
        if name in _FROZEN_SETTINGS and self.__dict__.get("_built"):
            raise AttributeError(
                f"Worker.{name} cannot be changed once the worker is built (its parts "
                f"read the settings checked then): pass {name}= to Worker(...)"
            )
        super().__setattr__(name, value)

    def _reset(self) -> None:
        # Made here, not only in __init__, so that the events belong to the running loop.
        previous = getattr(self, "_parts", None)
        parts = WorkerParts(
            self.settings,
            self.store,
            self._outage,
            instance=self._instance,
            on_task_end=lambda task: self._loop_ended(parts, task),
        )
        if previous is not None:
            # A handler of the last run that went on past its shutdown answers here.
            previous.writer.successor = parts.writer
        self._parts = parts
        self._failure = None
        self._shutdown = None

    def _on_notification(self, payload: str) -> None:
        """A notification on the queue's channel (see Listener.on_notification)."""
        self._parts.listener.on_notification(payload)

    async def _hears_itself(self, conn: Any) -> bool:
        """True if a probe sent on the LISTEN connection ``conn`` comes back."""
        return await self._parts.listener.hears_itself(conn)

    async def _shut_down(self) -> None:
        parts = self._parts
        try:
            await shut_down(parts, lambda: self._failure)
        finally:
            abandon(parts)
            await parts.liveness.stop(0)
            self._started = False
            await self._stop_metrics()
            logger.info("worker %s stopped", self.worker_id)
