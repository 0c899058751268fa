"""Reads for the CLI, `pqrun top`, metrics and the dashboard: cheap and bounded.

None of these reads the whole table: each walks one partial index and stops after a
bound, and the caller says which numbers hit it (docs/operations.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import asyncpg

from pqrun.limits import check_int
from pqrun.models import AttemptError, Job, JobStatus

from .pauses import PAUSED_TYPES, PAUSED_TYPES_LIMIT
from .queries import query
from .registry import LIST_WORKERS
from .rows import status_filter
from .schedules import DATABASE_NOW

if TYPE_CHECKING:
    from .connections import Connection, StoreConnections

GET_JOB = query("get_job")
ERROR_HISTORY = query("error_history")
LIST_JOBS = query("list_jobs")
STATUS_ACTIVE = query("status_active")
STATUS_FINISHED = query("status_finished")
STATUS_ESTIMATES = query("status_estimates")
STATUS_RECENT = query("status_recent")
FAILED_BY_TYPE = query("failed_by_type")
WAITING_BY_TYPE = query("waiting_by_type")
RUN_STATE = query("run_state")
STATUS_WAITING = query("status_waiting")
DEPENDENCIES = query("dependencies")
DEPENDENCY_JOBS = query("dependency_jobs")
#: The dependents of a job its page lists (the newest).
DEPENDENTS_SHOWN = 100
# A worker's heartbeat says what its jobs are doing while it is fresh: within the worker's
# own stale period, or this for a row that names none.
DEFAULT_STALE_AFTER = timedelta(seconds=30)
RECENT_FAILURES = query("recent_failures")
WORKERS_ALIVE = query("workers_alive")
MAX_JOB_ID = query("max_job_id")
BROWSE_JOBS = query("browse_jobs")

# `pqrun status` counts at most this many rows of a status, and at most this many recent
# completions for a rate; beyond, it estimates.
STATUS_COUNT_CAP = 100_000
STATUS_RATE_CAP = 10_000


class InspectionMethods:
    """PgJobStore's reads of jobs, counts and rates (CLI, dashboard, metrics, the app)."""

    _db: StoreConnections

    async def get_job(self, job_id: int) -> Job | None:
        """The job with this id, or None."""
        row = await self._db.fetchrow(GET_JOB, job_id)
        return None if row is None else Job.from_record(row)

    async def error_history(self, job_id: int) -> list[AttemptError]:
        """The errors of the job's last 20 failed or taken-back attempts, oldest first
        (empty when none failed, or there is no such job)."""
        return AttemptError.list_from_json(await self._db.fetchval(ERROR_HISTORY, job_id))

    async def run_state(self, job: Job) -> str | None:
        """For a RUNNING job: ``"started"`` (its handler runs), ``"waiting"`` (claimed into
        its worker's buffer, waiting for a free slot), or None when its worker's last
        heartbeat does not list it yet (or is stale), as of that heartbeat."""
        if job.status is not JobStatus.RUNNING or job.locked_by is None:
            return None
        row = await self._db.fetchrow(RUN_STATE, job.id, job.locked_by, DEFAULT_STALE_AFTER)
        if row is None or not row["held"] or not row["live"]:
            return None
        return "started" if row["started"] else "waiting"

    async def dependencies(self, job_id: int) -> dict[str, list[dict[str, Any]]]:
        """The jobs job ``job_id`` depends on (``"dependencies"``) and the newest 100
        that depend on it (``"dependents"``): each ``{"id", "job_type", "status"}``."""
        rows = await self._db.fetch(DEPENDENCIES, job_id, DEPENDENTS_SHOWN)
        found: dict[str, list[dict[str, Any]]] = {"dependencies": [], "dependents": []}
        for row in rows:
            found[row["relation"]].append(
                {"id": row["id"], "job_type": row["job_type"], "status": row["status"]}
            )
        return found

    async def dependency_jobs(self, job_id: int) -> list[Job]:
        """The jobs job ``job_id`` depends on, in id order, with their results (what a
        handler's ``ctx.dependencies()`` returns)."""
        rows = await self._db.fetch(DEPENDENCY_JOBS, job_id)
        return [Job.from_record(row) for row in rows]

    async def list_jobs(
        self,
        status: JobStatus | str | None = None,
        job_type: str | None = None,
        limit: int = 100,
    ) -> list[Job]:
        """The newest jobs first, optionally of one status and/or job type."""
        check_int("limit", limit, 1)
        rows = await self._db.fetch(LIST_JOBS, status_filter(status), job_type, limit)
        return [Job.from_record(row) for row in rows]

    async def recent_failures(self, limit: int = 10) -> list[dict[str, Any]]:
        """The newest FAILED jobs: id, job_type, attempts, max_attempts, finished_at, error.

        ``error`` is the first line of ``last_error``.
        """
        check_int("limit", limit, 1)
        rows = await self._db.fetch(RECENT_FAILURES, limit)
        return [dict(row) for row in rows]

    async def status_counts(self, count_cap: int = 20_000) -> dict[str, dict[str, Any]]:
        """Jobs per status, each ``{"count", "exact"}``: counted through the indexes up
        to ``count_cap``, beyond that the planner's estimate (``count`` None before the
        table was first analyzed; ``at_least`` is the cap)."""
        check_int("count_cap", count_cap, 1)
        async with self._db.acquire() as conn:
            _active, counts = await count_statuses(self._db, conn, count_cap)
        return counts

    async def queue_status(
        self, *, count_cap: int = STATUS_COUNT_CAP, rate_cap: int = STATUS_RATE_CAP
    ) -> dict[str, Any]:
        """A summary of the queue for ``pqrun status`` (JSON-ready), without a table scan.

        ``counts`` per status, ``by_type`` for READY/RUNNING jobs (each ``paused`` or
        not), ``oldest_due_seconds`` (how long the longest-waiting due job has waited),
        ``throughput`` of DONE and FAILED jobs over the last minute and hour,
        ``workers``, and ``paused``: the paused job types (``job_type``, ``paused_at``,
        ``reason``), with jobs or without. Each count says
        whether it is ``exact``: a status with more than ``count_cap`` jobs gets the
        planner's estimate (None before the table's first ANALYZE), and a window with
        more than ``rate_cap`` finished jobs says ``at_least`` that many (count None),
        with the rate of the newest ``rate_cap``.
        """
        check_int("count_cap", count_cap, 1)
        check_int("rate_cap", rate_cap, 1)
        async with self._db.acquire() as conn:
            now = await conn.fetchval(DATABASE_NOW, timeout=self._db.statement_timeout)
            active, counts = await count_statuses(self._db, conn, count_cap)
            windows = {"last_minute": timedelta(minutes=1), "last_hour": timedelta(hours=1)}
            throughput: dict[str, dict[str, Any]] = {}
            for status in (JobStatus.DONE, JobStatus.FAILED):
                for name, window in windows.items():
                    row = await conn.fetchrow(
                        STATUS_RECENT, status.value, window, rate_cap,
                        timeout=self._db.statement_timeout,
                    )  # fmt: skip
                    assert row is not None
                    throughput.setdefault(status.value, {})[name] = rate(row, window, rate_cap)
            workers = await conn.fetch(LIST_WORKERS, timeout=self._db.statement_timeout)
            waiting = await waiting_by_type(self._db, conn)
            paused = await conn.fetch(
                PAUSED_TYPES, PAUSED_TYPES_LIMIT, timeout=self._db.statement_timeout
            )
        paused_types = {row["job_type"] for row in paused}
        by_type: dict[str, dict[str, Any]] = {}
        oldest_due: datetime | None = None
        for row in active:
            entry = by_type.setdefault(
                row["job_type"],
                {
                    "ready": 0,
                    "due": 0,
                    "running": 0,
                    "waiting": 0,
                    "paused": row["job_type"] in paused_types,
                },
            )
            if row["status"] == JobStatus.READY:
                entry["ready"] += row["n"]
                entry["due"] += row["due"]
                if row["oldest_due"] is not None and (
                    oldest_due is None or row["oldest_due"] < oldest_due
                ):
                    oldest_due = row["oldest_due"]
            else:
                entry["running"] += row["n"]
                entry["waiting"] = min(row["n"], waiting.get(row["job_type"], 0))
        return {
            "schema": self._db.schema or self._db.channel.removeprefix("pqrun:"),
            "now": now.isoformat(),
            "counts": counts,
            "by_type": [{"job_type": name, **by_type[name]} for name in sorted(by_type)],
            "oldest_due_seconds": (
                None if oldest_due is None else max(0.0, (now - oldest_due).total_seconds())
            ),
            "throughput": throughput,
            "workers": [
                {
                    **dict(w),
                    "started_at": w["started_at"].isoformat(),
                    "heartbeat_at": w["heartbeat_at"].isoformat(),
                    "heartbeat_age_seconds": (now - w["heartbeat_at"]).total_seconds(),
                }
                for w in workers
            ],
            "paused": [{**dict(row), "paused_at": row["paused_at"].isoformat()} for row in paused],
        }

    async def queue_stats(self, count_cap: int = STATUS_COUNT_CAP) -> list[dict[str, Any]]:
        """Active jobs per type, through the partial indexes, at most ``count_cap`` of
        each status.

        One dict per job type with READY or RUNNING jobs: ``job_type``, ``ready`` (all
        READY, due or not), ``due`` (READY and due now), ``running``, and
        ``oldest_due_seconds`` (how long the oldest due READY job has waited; None when
        none is due), and ``waiting``: of the running, those claimed into a worker's
        buffer whose handler had not started at that worker's last heartbeat.
        """
        check_int("count_cap", count_cap, 1)
        async with self._db.acquire() as conn:
            rows = await conn.fetch(STATUS_ACTIVE, count_cap, timeout=self._db.statement_timeout)
            waiting = await waiting_by_type(self._db, conn)
        stats: dict[str, dict[str, Any]] = {}
        for row in rows:
            entry = stats.setdefault(
                row["job_type"],
                {
                    "job_type": row["job_type"],
                    "ready": 0,
                    "due": 0,
                    "running": 0,
                    "waiting": 0,
                    "oldest_due_seconds": None,
                },
            )
            if row["status"] == "READY":
                entry["ready"] = row["n"]
                entry["due"] = row["due"]
                entry["oldest_due_seconds"] = row["oldest_due_seconds"]
            else:
                entry["running"] = row["n"]
                entry["waiting"] = min(row["n"], waiting.get(row["job_type"], 0))
        return [stats[job_type] for job_type in sorted(stats)]

    async def finished_per_second(
        self, window: timedelta = timedelta(minutes=1), rate_cap: int = 2_000
    ) -> float:
        """Jobs that finished DONE or FAILED per second over the last ``window`` (past
        ``rate_cap`` of a status, the rate of its newest ``rate_cap``), as ``pqrun
        status`` and ``pqrun top`` count them."""
        check_int("rate_cap", rate_cap, 1)
        total = 0.0
        async with self._db.acquire() as conn:
            for status in (JobStatus.DONE, JobStatus.FAILED):
                row = await conn.fetchrow(
                    STATUS_RECENT, status.value, window, rate_cap,
                    timeout=self._db.statement_timeout,
                )  # fmt: skip
                assert row is not None
                total += rate(row, window, rate_cap)["per_second"]
        return total

    async def failed_by_type(
        self, within: timedelta = timedelta(hours=1), count_cap: int = 10_000
    ) -> dict[str, int]:
        """Jobs that FAILED within the last ``within``, by type, counting at most the
        newest ``count_cap`` (through the jobs_finished index)."""
        check_int("count_cap", count_cap, 1)
        rows = await self._db.fetch(FAILED_BY_TYPE, within, count_cap)
        return {row["job_type"]: row["n"] for row in rows}

    async def workers_alive(self, within: timedelta = timedelta(seconds=30)) -> int:
        """How many registered workers sent a heartbeat in the last ``within``."""
        alive: int = await self._db.fetchval(WORKERS_ALIVE, within)
        return alive

    async def max_job_id(self) -> int:
        """The highest job id so far (0 for an empty table); one step of the primary key."""
        newest: int = await self._db.fetchval(MAX_JOB_ID)
        return newest

    async def browse_jobs(
        self,
        *,
        status: JobStatus | str | None = None,
        job_type: str | None = None,
        before: int | None = None,
        window: int = 50_000,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` jobs, newest first, among the ``window`` ids below ``before``.

        For browsing a big table: whatever the filters, this reads at most ``window``
        rows (through the primary key), so a rare status or type on millions of rows is
        no full scan. Fewer than ``limit`` rows means that window holds no more: look on
        from ``before - window``. ``before`` None: from the newest job. Rows are dicts of
        the columns a list shows (``last_error`` cut to 300 characters).
        """
        check_int("window", window, 1)
        check_int("limit", limit, 1)
        if before is None:
            before = await self.max_job_id() + 1
        rows = await self._db.fetch(
            BROWSE_JOBS, before, window, status_filter(status), job_type, limit
        )
        return [dict(row) for row in rows]


async def waiting_by_type(db: StoreConnections, conn: Connection) -> dict[str, int]:
    """RUNNING jobs per type that a live worker held, handler not started, at its last
    heartbeat."""
    rows = await conn.fetch(WAITING_BY_TYPE, DEFAULT_STALE_AFTER, timeout=db.statement_timeout)
    return {row["job_type"]: row["waiting"] for row in rows}


async def count_statuses(
    db: StoreConnections, conn: Connection, count_cap: int
) -> tuple[list[asyncpg.Record], dict[str, dict[str, Any]]]:
    """The active rows by type and status (at most ``count_cap`` per status), and for
    each status ``{"count", "exact"}``: exact under the cap, else the planner's
    estimate (``count`` None before the first ANALYZE) and ``at_least`` the cap."""
    active = await conn.fetch(STATUS_ACTIVE, count_cap, timeout=db.statement_timeout)
    totals = {
        JobStatus.WAITING.value: await conn.fetchval(
            STATUS_WAITING, count_cap, timeout=db.statement_timeout
        ),
        JobStatus.READY.value: 0,
        JobStatus.RUNNING.value: 0,
    }
    for row in active:
        totals[row["status"]] += row["n"]
    for finished in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED):
        totals[finished.value] = await conn.fetchval(
            STATUS_FINISHED, finished.value, count_cap, timeout=db.statement_timeout
        )
    estimates: dict[str, int] | None = None
    counts: dict[str, dict[str, Any]] = {}
    for status, total in totals.items():
        if total < count_cap:
            counts[status] = {"count": total, "exact": True}
            continue
        if estimates is None:
            rows = await conn.fetch(STATUS_ESTIMATES, timeout=db.statement_timeout)
            estimates = {row["status"]: row["estimate"] for row in rows}
        estimate = estimates.get(status)
        counts[status] = {
            "count": max(estimate, count_cap) if estimate is not None else None,
            "exact": False,
            "at_least": count_cap,
        }
    return active, counts


def rate(row: Mapping[str, Any], window: timedelta, cap: int) -> dict[str, Any]:
    """A count of recent jobs, exact below the cap. At the cap, the count is unknown
    (``None``, ``at_least`` the cap: the newest ``cap`` fell within the window) and the
    rate is that of the newest ``cap``, over the time they took: a burst of them is not
    taken for a whole window's worth."""
    count: int = row["n"]
    seconds = window.total_seconds()
    if count < cap or row["oldest"] is None:
        return {"count": count, "per_second": count / seconds, "exact": True}
    span = max((row["now"] - row["oldest"]).total_seconds(), 1e-3)
    return {"count": None, "at_least": count, "per_second": count / span, "exact": False}
