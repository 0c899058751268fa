"""What a Worker uses of its store: ``WorkerStore``, the protocol PgJobStore provides.

A Worker takes any object with these members, so that a test can hand it a double (a
PgJobStore wrapped to count or fail calls, say). Handlers get that object as
``ctx.store``. The members are PgJobStore's; their docstrings say what each must do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pqrun._store.connections import Connection
    from pqrun._store.maintenance import Pruned, VacuumStats
    from pqrun._store.moves import ClaimLimits
    from pqrun._store.type_minutes import MinuteCounts
    from pqrun.models import Job, JobStatus
    from pqrun.observers import JobObserver
    from pqrun.schedules import Schedule


@runtime_checkable
class WorkerStore(Protocol):
    """The members of PgJobStore a Worker calls (``Worker(store, ...)`` checks them)."""

    observers: tuple[JobObserver, ...]

    @property
    def started(self) -> bool: ...
    @property
    def statement_timeout(self) -> float: ...
    @property
    def channel(self) -> str: ...
    @property
    def schema(self) -> str | None: ...

    # The store's lifetime and connections.
    async def start(self) -> None: ...
    async def close(self, within: float = 10.0) -> None: ...
    def want_connections(self, count: int) -> None: ...
    def register_payload_model(self, job_type: str, model: type[Any]) -> None: ...
    async def dedicated_connection(
        self,
        purpose: str,
        server_settings: Mapping[str, str] | None = None,
        *,
        session: bool = False,
    ) -> Connection: ...
    async def listen(self, on_payload: Callable[[str], None]) -> Connection: ...

    # Claims and their outcomes (docs/state-machine.md).
    async def pickup_batch(
        self, worker_id: str, job_types: Sequence[str] | None, limit: int
    ) -> list[Job]: ...
    async def pickup_limited(
        self, worker_id: str, job_type: str, handler: ClaimLimits, limit: int
    ) -> tuple[list[Job], float | None]: ...
    async def delete_done_batch(
        self, done: Sequence[Job], *, conn: Connection | None = None
    ) -> set[tuple[int, int | None]]: ...
    async def mark_done_batch(
        self, done: Sequence[tuple[Job, str, int]], *, conn: Connection | None = None
    ) -> set[tuple[int, int | None]]: ...
    async def mark_error(
        self,
        job: Job | int,
        error: str,
        retry_after: timedelta | None = None,
        terminal: bool = False,
        *,
        worker_id: str | None = None,
        attempt: int | None = None,
        duration_ms: int | None = None,
        conn: Connection | None = None,
    ) -> JobStatus | None: ...
    async def snooze(
        self,
        job: Job | int,
        after: timedelta,
        *,
        worker_id: str | None = None,
        attempt: int | None = None,
        duration_ms: int | None = None,
        conn: Connection | None = None,
    ) -> bool: ...
    async def release(self, jobs: Sequence[Job], reason: str | None) -> list[int]: ...
    async def still_owned(
        self,
        worker_id: str,
        jobs: Sequence[Job],
        *,
        conn: Connection | None = None,
        within: float | None = None,
    ) -> set[tuple[int, int | None]]: ...
    async def cancel(self, job_id: int) -> bool: ...
    async def wake_workers(self) -> None: ...
    async def jobs_left_behind(
        self,
        hints: Sequence[tuple[str, int, int]],
        *,
        conn: Connection | None = None,
        within: float | None = None,
    ) -> bool: ...

    # Liveness (the worker registry).
    async def heartbeat_claims(
        self,
        worker_id: str,
        jobs: Sequence[Job],
        *,
        job_types: Sequence[str],
        concurrency: int,
        conn: Connection | None,
        within: float | None,
        instance: str | None = None,
        stale_after: timedelta = ...,
        wake_capacity: int = 0,
        started: Sequence[int] = (),
    ) -> set[tuple[int, int | None]]: ...
    async def leave(self, worker_id: str, *, instance: str | None = None) -> None: ...
    async def wake_roster(
        self,
        default_stale_after: timedelta = ...,
        *,
        conn: Connection | None = None,
        within: float | None = None,
    ) -> list[tuple[str, list[str], int]]: ...

    # Upkeep: the reaper, the pruner, the vacuumer, the scheduler.
    async def reap_stale(
        self,
        default_stale_after: timedelta = ...,
        *,
        reachable_for: timedelta | None = None,
    ) -> list[tuple[int, JobStatus]]: ...
    async def prune(
        self,
        keep_done: timedelta | None = ...,
        keep_failed: timedelta | None = ...,
        *,
        batch_size: int = 1000,
        max_batches: int | None = None,
    ) -> Pruned: ...
    async def vacuum_stats(self) -> VacuumStats: ...
    async def vacuum(self, *, min_seconds_between: float = 0.0) -> bool: ...
    async def analyze(self, *, if_missing: bool = False) -> bool | None: ...
    async def declare_schedules(self, schedules: Sequence[Schedule]) -> None: ...
    async def fire_due_schedules(
        self, schedules: Sequence[Schedule]
    ) -> tuple[list[int], float]: ...
    # The per-type rollup (the dashboard's page of a job type).
    async def add_type_minutes(self, rows: Sequence[MinuteCounts]) -> None: ...
    async def sample_ready_depth(self, count_cap: int = ...) -> float: ...
    # Metrics (Worker(metrics_port=...)).
    def observe(self, observer: JobObserver) -> None: ...
    async def queue_stats(self, count_cap: int = ...) -> list[dict[str, Any]]: ...
    async def workers_alive(self, within: timedelta = ...) -> int: ...
    async def wait(
        self,
        job_id: int,
        timeout: float | timedelta | None = 30.0,  # noqa: ASYNC109 - PgJobStore.wait's API
    ) -> Job: ...


def check_store(store: object) -> None:
    """Raise TypeError naming what ``store`` lacks of a WorkerStore, if anything."""
    missing = missing_members(store)
    if missing:
        raise TypeError(
            f"Worker(store=...) needs a PgJobStore (or an object with what a worker "
            f"uses of one: pqrun.WorkerStore); {type(store).__name__} lacks "
            f"{', '.join(missing)}"
        )


def missing_members(store: object) -> list[str]:
    """The members of WorkerStore that ``store`` lacks (empty: it will do)."""
    names = sorted(
        name
        for name in (*WorkerStore.__annotations__, *vars(WorkerStore))
        if not name.startswith("_")
    )
    return [name for name in names if not hasattr(store, name)]
