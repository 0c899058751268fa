"""Prometheus metrics: job counters and durations, queue depth, workers alive.

Needs ``prometheus_client`` (``pip install 'pqrun[metrics]'``); pqrun imports this
module only when metrics are asked for. Serve them from a worker with
``Worker(..., metrics_port=9100)``, or mount them in your app::

    app.mount("/metrics", pqrun.metrics_app(store))

Counters come from what the store and its workers see in this process (an observer,
see ``pqrun.observers``). Gauges of the queue come from the database, through one cheap
statement over the partial indexes of active jobs, run at most every
``refresh_every`` seconds and only when scraped. Gauges of the workers' slots are read
off the workers running in this process when scraped (``pqrun._metrics_workers``).
docs/observability.md lists them all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from datetime import timedelta
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from ._config import env_int
from ._metrics_workers import EventCounters, WorkerCollector
from .models import Job
from .observers import JobObserver
from .store import PgJobStore

logger = logging.getLogger("pqrun")

#: Buckets of the job duration histogram (seconds): from a no-op to an hour.
DURATION_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
)
#: Buckets of the wait histogram (seconds): from a job picked up at once to an hour late.
WAIT_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
)
#: Reading the queue gauges is given up after this many seconds (scrapes time out at 10).
READ_TIMEOUT = 5.0
#: A worker counts as alive while its heartbeat is younger than this.
ALIVE_WITHIN = timedelta(seconds=30)
#: How many job types get a ``job_type`` label of their own, unless told otherwise
#: (``max_job_types=`` or PQRUN_METRICS_MAX_JOB_TYPES). Each type costs about a dozen
#: series: an app that makes job types from data (one per customer) would otherwise
#: make a scrape of megabytes and a Prometheus of millions of series.
MAX_JOB_TYPES = 100
#: The ``job_type`` label of every type beyond the first ``max_job_types`` seen.
OTHER_JOB_TYPES = "__other__"


def _queue_name(store: PgJobStore | Any) -> str:
    """The queue's name in labels: the schema of its jobs table."""
    channel: str = store.channel
    return channel.removeprefix("pqrun:")


class _QueueCollector(Collector):
    """Gauges of the watched queues, from the last refresh (never a query at collect time)."""

    def __init__(self, metrics: PrometheusMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ready = GaugeMetricFamily(
            "pqrun_queue_ready_jobs",
            "READY jobs (due now or later) by job type",
            labels=["queue", "job_type"],
        )
        due = GaugeMetricFamily(
            "pqrun_queue_due_jobs",
            "READY jobs that are due now (waiting for a worker) by job type",
            labels=["queue", "job_type"],
        )
        running = GaugeMetricFamily(
            "pqrun_queue_running_jobs", "RUNNING jobs by job type", labels=["queue", "job_type"]
        )
        oldest = GaugeMetricFamily(
            "pqrun_queue_oldest_due_age_seconds",
            "How long the oldest due READY job has waited (0 when none is due)",
            labels=["queue", "job_type"],
        )
        workers = GaugeMetricFamily(
            "pqrun_workers_alive",
            f"Registered workers with a heartbeat in the last {ALIVE_WITHIN.seconds} s",
            labels=["queue"],
        )
        paused = GaugeMetricFamily(
            "pqrun_job_type_paused",
            "1 while the job type is paused: no worker claims its jobs (job_type "
            '"__other__": how many types beyond the label bound are paused)',
            labels=["queue", "job_type"],
        )
        age = GaugeMetricFamily(
            "pqrun_queue_stats_age_seconds",
            "Seconds since the queue gauges were read from the database",
            labels=["queue"],
        )
        now = time.monotonic()
        for queue, snapshot in list(self._metrics.snapshots.items()):
            # Types beyond the bound are summed under OTHER_JOB_TYPES (oldest: the oldest).
            per_label: dict[str, list[float]] = {}
            for row in snapshot.stats:
                label = self._metrics.job_type_label(row["job_type"])
                sums = per_label.setdefault(label, [0, 0, 0, 0.0])
                sums[0] += row["ready"]
                sums[1] += row["due"]
                sums[2] += row["running"]
                sums[3] = max(sums[3], row["oldest_due_seconds"] or 0.0)
            for label, (n_ready, n_due, n_running, age_due) in per_label.items():
                labels = [queue, label]
                ready.add_metric(labels, n_ready)
                due.add_metric(labels, n_due)
                running.add_metric(labels, n_running)
                oldest.add_metric(labels, age_due)
            paused_per_label: dict[str, int] = {}
            for job_type in snapshot.paused:
                label = self._metrics.job_type_label(job_type)
                paused_per_label[label] = paused_per_label.get(label, 0) + 1
            for label, count in paused_per_label.items():
                paused.add_metric([queue, label], count)
            workers.add_metric([queue], snapshot.workers_alive)
            age.add_metric([queue], now - snapshot.taken_at)
        yield from (ready, due, running, oldest, workers, paused, age)


class _Snapshot:
    __slots__ = ("paused", "stats", "taken_at", "took", "workers_alive")

    def __init__(
        self,
        stats: list[dict[str, Any]],
        workers_alive: int,
        taken_at: float,
        took: float,
        paused: list[str],
    ) -> None:
        self.stats = stats
        self.workers_alive = workers_alive
        self.paused = paused
        self.taken_at = taken_at
        self.took = took


class _TypeCounters:
    """The label children of one job type."""

    __slots__ = ("_finished", "duration", "job_type", "outcomes", "started", "wait")

    def __init__(self, metrics: PrometheusMetrics, job_type: str) -> None:
        self.job_type = job_type
        self.started = metrics.started_total.labels(job_type)
        self.duration = metrics.duration_seconds.labels(job_type)
        self.wait = metrics.wait_seconds.labels(job_type)
        self.outcomes: dict[str, Any] = {}
        self._finished = metrics.finished_total

    def outcome(self, outcome: str) -> Any:
        child = self.outcomes.get(outcome)
        if child is None:
            child = self.outcomes[outcome] = self._finished.labels(self.job_type, outcome)
        return child


class PrometheusMetrics(JobObserver):
    """pqrun's metrics in a prometheus_client registry (the default one unless given).

    ``instrument(store)`` attaches the process-wide instance to a store; make your own
    with ``registry=CollectorRegistry()`` to keep them apart (tests do).

    ``max_job_types`` bounds the ``job_type`` label: the first that many job types seen
    are labelled by name, every later one ``job_type="__other__"`` (default: the
    environment variable PQRUN_METRICS_MAX_JOB_TYPES, else MAX_JOB_TYPES, 100).
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        refresh_every: float = 5.0,
        max_job_types: int | None = None,
    ) -> None:
        self.registry = REGISTRY if registry is None else registry
        self.refresh_every = refresh_every
        #: How many job types get a label of their own; the rest count as "__other__".
        self.max_job_types = env_int("PQRUN_METRICS_MAX_JOB_TYPES", max_job_types, MAX_JOB_TYPES)
        # The job types labelled by name: the first max_job_types seen, for good, so
        # that a type's series never moves between its name and "__other__".
        self._named_types: set[str] = set()
        labels = ["job_type"]
        registry = self.registry
        self.enqueued_total = Counter(
            "pqrun_jobs_enqueued",
            "Jobs passed to enqueue()/enqueue_many() in this process",
            labels,
            registry=registry,
        )
        self.started_total = Counter(
            "pqrun_jobs_started",
            "Runs of a handler started by workers in this process",
            labels,
            registry=registry,
        )
        # One counter for every end of a run, by outcome: completed is outcome="done",
        # failed "failed", retried "retried" (one increment per run, not three).
        self.finished_total = Counter(
            "pqrun_jobs_finished",
            "Runs by what they came to: done (DONE), failed (FAILED), retried (READY again "
            "after an error), snoozed, cancelled (stopped by cancel()), ignored (the run no "
            "longer owned the job)",
            ["job_type", "outcome"],
            registry=registry,
        )
        self.duration_seconds = Histogram(
            "pqrun_job_duration_seconds",
            "How long handlers ran (runs whose outcome was recorded)",
            labels,
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.wait_seconds = Histogram(
            "pqrun_job_wait_seconds",
            "How long jobs waited for a worker: from when they were due (enqueued, or "
            "their run_after) to the start of their handler, by this process's clock",
            labels,
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        #: The last reading of each watched queue, by queue name.
        self.snapshots: dict[str, _Snapshot] = {}
        self._stores: list[PgJobStore] = []
        self._refresh_lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._refresh_failing = False
        # The children of each job type, made once, so that counting a run allocates
        # nothing and looks up one dict.
        self._per_type: dict[str, _TypeCounters] = {}
        registry.register(_QueueCollector(self))
        events = EventCounters(registry)
        #: Due schedule ticks handled here, by ``schedule`` and ``result``.
        self.schedule_ticks_total = events.schedule_ticks
        #: Failed attempts of the workers' loops, by ``operation`` and ``kind``.
        self.database_errors_total = events.database_errors
        registry.register(
            WorkerCollector(lambda observers: self in observers, _queue_name, self.job_type_label)
        )

    def job_type_label(self, job_type: str) -> str:
        """The ``job_type`` label of ``job_type``: its name, or "__other__" beyond the bound."""
        if job_type in self._named_types:
            return job_type
        if len(self._named_types) < self.max_job_types and job_type != OTHER_JOB_TYPES:
            self._named_types.add(job_type)
            return job_type
        return OTHER_JOB_TYPES

    def _children(self, job_type: str) -> _TypeCounters:
        children = self._per_type.get(job_type)
        if children is None:
            label = self.job_type_label(job_type)
            children = self._per_type.get(label) or _TypeCounters(self, label)
            # Kept by label, so this dict is bounded too: a type beyond the bound finds
            # the children of "__other__" through job_type_label each time.
            self._per_type[label] = children
        return children

    # -- JobObserver -----------------------------------------------------------------

    def enqueued(self, job_type: str, count: int) -> None:
        self.enqueued_total.labels(self.job_type_label(job_type)).inc(count)

    def started(self, job: Job) -> None:
        children = self._per_type.get(job.job_type) or self._children(job.job_type)
        children.started.inc()
        due = max(job.run_after, job.created_at).timestamp()
        children.wait.observe(max(time.time() - due, 0.0))

    def finished(self, job: Job, outcome: str, duration_seconds: float) -> None:
        children = self._per_type.get(job.job_type) or self._children(job.job_type)
        children.outcome(outcome).inc()
        if outcome != "ignored":
            children.duration.observe(duration_seconds)

    def schedule_ticked(self, schedule: str, result: str) -> None:
        self.schedule_ticks_total.labels(schedule, result).inc()

    def database_error(self, worker_id: str, operation: str, kind: str) -> None:
        self.database_errors_total.labels(operation, kind).inc()

    # -- queue gauges ----------------------------------------------------------------

    def watch(self, store: PgJobStore) -> None:
        """Report the queue gauges of ``store``'s jobs table."""
        if store not in self._stores:
            self._stores.append(store)

    async def refresh(self, *, force: bool = False) -> None:
        """Read the queue gauges again if the last reading is older than refresh_every.

        A reading that took long (a backlog of millions of READY jobs) is kept ten times
        as long as it took, so that scrapes cost the database at most a tenth of one
        connection's time. A reading is given up after READ_TIMEOUT seconds: the gauges
        then keep their last values rather than make the scrape time out.
        """
        loop = asyncio.get_running_loop()
        if self._refresh_lock is None or self._refresh_lock[0] is not loop:
            self._refresh_lock = (loop, asyncio.Lock())  # a lock belongs to one loop
        async with self._refresh_lock[1]:
            now = time.monotonic()
            for store in list(self._stores):
                name = _queue_name(store)  # the schema, known once the store started
                last = self.snapshots.get(name)
                if (
                    not force
                    and last is not None
                    and now - last.taken_at < max(self.refresh_every, 10 * last.took)
                ):
                    continue
                started = time.monotonic()
                try:
                    async with asyncio.timeout(READ_TIMEOUT):
                        stats = await store.queue_stats()
                        alive = await store.workers_alive(ALIVE_WITHIN)
                        paused = [p["job_type"] for p in await store.paused_types()]
                except Exception as exc:
                    if not self._refresh_failing:
                        logger.warning(
                            "pqrun metrics: cannot read the queue gauges (%s: %s); they keep "
                            "their last values (see pqrun_queue_stats_age_seconds)",
                            type(exc).__name__,
                            exc,
                        )
                    self._refresh_failing = True
                    continue
                if self._refresh_failing:
                    logger.info("pqrun metrics: the queue gauges are read again")
                self._refresh_failing = False
                done = time.monotonic()
                self.snapshots[name] = _Snapshot(stats, alive, done, done - started, paused)

    async def exposition(self) -> bytes:
        """The registry in Prometheus's text format, with fresh queue gauges."""
        await self.refresh()
        return generate_latest(self.registry)


_default: PrometheusMetrics | None = None


def default_metrics() -> PrometheusMetrics:
    """The process-wide metrics, in prometheus_client's default registry."""
    global _default
    if _default is None:
        _default = PrometheusMetrics()
    return _default


def instrument(
    store: PgJobStore,
    metrics: PrometheusMetrics | None = None,
    *,
    max_job_types: int | None = None,
) -> PrometheusMetrics:
    """Count ``store``'s jobs in ``metrics`` (default: ``default_metrics()``); return them.

    A store already instrumented keeps its metrics, which are returned.
    ``max_job_types`` sets how many job types get a label of their own (see
    PrometheusMetrics).
    """
    for observer in store.observers:
        if isinstance(observer, PrometheusMetrics):
            if max_job_types is not None:
                observer.max_job_types = env_int("max_job_types", max_job_types, 1)
            return observer
    if metrics is None:
        metrics = default_metrics()
    if max_job_types is not None:
        metrics.max_job_types = env_int("max_job_types", max_job_types, 1)
    store.observe(metrics)
    metrics.watch(store)
    return metrics


ASGIReceive = Callable[[], Awaitable[MutableMapping[str, Any]]]
ASGISend = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class MetricsApp:
    """An ASGI app answering every GET with the metrics: ``app.mount("/metrics", ...)``."""

    def __init__(self, metrics: PrometheusMetrics) -> None:
        self.metrics = metrics

    async def __call__(
        self, scope: MutableMapping[str, Any], receive: ASGIReceive, send: ASGISend
    ) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope["method"] not in ("GET", "HEAD"):
            status, body, content_type = 405, b"use GET\n", "text/plain; charset=utf-8"
        else:
            status, body, content_type = 200, await self.metrics.exposition(), CONTENT_TYPE_LATEST
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )


def metrics_app(
    store: PgJobStore,
    metrics: PrometheusMetrics | None = None,
    *,
    max_job_types: int | None = None,
) -> MetricsApp:
    """An ASGI app serving ``store``'s metrics: ``app.mount("/metrics", metrics_app(store))``.

    Instruments the store (``instrument``) so that enqueues through it, and runs by
    workers on it in this process, are counted; ``max_job_types`` as there.
    """
    return MetricsApp(instrument(store, metrics, max_job_types=max_job_types))


class MetricsServer:
    """A small HTTP server on the event loop answering ``GET /metrics`` (for a Worker)."""

    def __init__(self, metrics: PrometheusMetrics, host: str, port: int) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) it listens on once started (the port chosen when 0 was given)."""
        if self._server is None or not self._server.sockets:
            return None
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    @property
    def url(self) -> str:
        """The address to scrape, once started."""
        host, port = self.address or (self.host, self.port)
        return f"http://{host}:{port}/metrics"

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
        except OSError as exc:
            raise OSError(
                f"cannot serve metrics on {self.host}:{self.port}: {exc}; choose another "
                "metrics_port (or WORKER_METRICS_PORT), or stop what holds that port"
            ) from exc

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            # A scraper that keeps its connection open must not hold up a shutdown.
            await asyncio.wait({asyncio.ensure_future(server.wait_closed())}, timeout=1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, _, rest = request.partition(b" ")
            path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
            if method not in (b"GET", b"HEAD"):
                status, body, content_type = "405 Method Not Allowed", b"use GET\n", "text/plain"
            elif path not in (b"/metrics", b"/"):
                status, body, content_type = "404 Not Found", b"see /metrics\n", "text/plain"
            else:
                status, body = "200 OK", await self.metrics.exposition()
                content_type = CONTENT_TYPE_LATEST
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + (b"" if method == b"HEAD" else body))
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass  # the scraper went away or sent garbage: nothing to answer
        except Exception:
            logger.exception("pqrun metrics: answering a scrape failed")
        finally:
            writer.close()
