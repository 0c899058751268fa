"""The metric families of this process's workers, for ``pqrun.metrics``.

Gauges of slots are read off the running workers when scraped (``_worker.gauges``): a
worker counts nothing per job for them. Counters of schedule ticks and database errors
are incremented by ``PrometheusMetrics``'s observer hooks, which come once per tick or
per failed attempt, never per job. docs/observability.md describes each family.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ._worker.gauges import live


class EventCounters:
    """The counters of rare events: schedule ticks, database errors."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.schedule_ticks = Counter(
            "pqrun_schedule_ticks",
            "Due schedule ticks handled by this process's workers, by schedule and result: "
            "enqueued (its job was enqueued), skipped (missed while no worker ran, "
            'missed="skip"), failed (its job could not be enqueued)',
            ["schedule", "result"],
            registry=registry,
        )
        self.database_errors = Counter(
            "pqrun_database_errors",
            "Failed attempts of this process's workers' loops, by operation (claim, "
            "outcome_write, heartbeat, listen, reap, prune, vacuum, schedule, start) and "
            "kind (connection, timeout, other); each is retried with backoff",
            ["operation", "kind"],
            registry=registry,
        )


class WorkerCollector(Collector):
    """Slot gauges of the workers running now on the stores ``observed`` says are ours.

    ``observed(store_observers)`` answers whether a worker's store reports to these
    metrics; ``queue_of`` and ``type_label`` give its ``queue`` and ``job_type`` labels.
    """

    def __init__(
        self,
        observed: Callable[[tuple[object, ...]], bool],
        queue_of: Callable[[object], str],
        type_label: Callable[[str], str],
    ) -> None:
        self._observed = observed
        self._queue_of = queue_of
        self._type_label = type_label

    def collect(self) -> Iterator[GaugeMetricFamily]:
        slots = GaugeMetricFamily(
            "pqrun_worker_slots",
            "Slots of a running worker: how many handlers it runs at once (concurrency)",
            labels=["queue", "worker"],
        )
        busy = GaugeMetricFamily(
            "pqrun_worker_busy_slots",
            "Slots running a handler now, by job type",
            labels=["queue", "worker", "job_type"],
        )
        buffered = GaugeMetricFamily(
            "pqrun_worker_buffered_jobs",
            "Jobs claimed (RUNNING in the table) but waiting in the worker's buffer for a "
            "free slot: no handler runs them yet",
            labels=["queue", "worker", "job_type"],
        )
        for gauges in live():
            if not self._observed(tuple(gauges.store.observers)):
                continue
            queue = self._queue_of(gauges.store)
            slots.add_metric([queue, gauges.worker_id], gauges.concurrency)
            for family, counts in ((busy, gauges.busy()), (buffered, gauges.buffered())):
                # Types beyond the label bound are summed under "__other__".
                per_label: dict[str, int] = {}
                for job_type, count in counts.items():
                    label = self._type_label(job_type)
                    per_label[label] = per_label.get(label, 0) + count
                for label, count in per_label.items():
                    family.add_metric([queue, gauges.worker_id, label], count)
        yield slots
        yield busy
        yield buffered
