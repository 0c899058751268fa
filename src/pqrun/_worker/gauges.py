"""What the running workers of this process are doing now, for metrics to read.

A ``Worker``'s run puts a ``SlotGauges`` in ``LIVE`` when its slots start and takes it
out when the run ends; ``pqrun.metrics`` reads them when scraped. Nothing is counted per
job: the numbers are read off the run's ``RunRegistry`` (runs under way, the buffer of
claimed jobs) at that moment. The jobs in the buffer are RUNNING in the table, but no
handler runs them yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .runs import RunRegistry

if TYPE_CHECKING:
    from .store_protocol import WorkerStore


class SlotGauges:
    """One worker run's slots and buffer, read live."""

    __slots__ = ("concurrency", "job_types", "registry", "store", "worker_id")

    def __init__(
        self,
        store: WorkerStore,
        worker_id: str,
        concurrency: int,
        job_types: Sequence[str],
        registry: RunRegistry,
    ) -> None:
        self.store = store
        self.worker_id = worker_id
        self.concurrency = concurrency
        self.job_types = tuple(job_types)
        self.registry = registry

    def busy(self) -> dict[str, int]:
        """Handlers running now, by job type (every type this worker runs, 0 included)."""
        counts = dict.fromkeys(self.job_types, 0)
        # list() copies the set in one step, so a scrape in another thread (the
        # prometheus_client server) never sees it change while counting.
        for run in list(self.registry.running):
            job_type = run.job.job_type
            counts[job_type] = counts.get(job_type, 0) + 1
        return counts

    def buffered(self) -> dict[str, int]:
        """Jobs claimed but waiting in the buffer for a free slot, by job type."""
        counts = dict.fromkeys(self.job_types, 0)
        for job, _claimed_at in list(self.registry.buffer):
            counts[job.job_type] = counts.get(job.job_type, 0) + 1
        return counts


#: The runs of workers going on in this process.
LIVE: set[SlotGauges] = set()


def live() -> list[SlotGauges]:
    """The runs going on now (a copy: workers start and stop while it is read)."""
    return list(LIVE)
