"""Schedules: workers declare them, and fire each due tick once across all workers."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg

from pqrun.errors import JobConflict
from pqrun.models import RawJSON
from pqrun.observers import tell_each

from .enqueue import EnqueueMethods
from .queries import query
from .session_settings import own_transaction

if TYPE_CHECKING:
    from pqrun.schedules import Schedule

logger = logging.getLogger("pqrun")

DATABASE_NOW = query("database_now")
DECLARE_SCHEDULE = query("declare_schedule")
DUE_SCHEDULES = query("due_schedules")
ADVANCE_SCHEDULE = query("advance_schedule")
NEXT_SCHEDULE_DUE = query("next_schedule_due")
LIST_SCHEDULES = query("list_schedules")
REMOVE_SCHEDULE = query("remove_schedule")


class ScheduleMethods(EnqueueMethods):
    """PgJobStore's schedules (a worker's scheduler; operators list and remove them).

    A tick is enqueued like any job, so this builds on the enqueue methods.
    """

    async def declare_schedules(self, schedules: Sequence[Schedule]) -> None:
        """Store these schedules' definitions (a worker does this when it starts)."""
        async with self._db.acquire() as conn, own_transaction(conn):
            now: datetime = await conn.fetchval(DATABASE_NOW, timeout=self._db.statement_timeout)
            for schedule in schedules:
                await conn.execute(
                    DECLARE_SCHEDULE,
                    schedule.name,
                    schedule.job_type,
                    schedule.cron,
                    schedule.every_seconds,
                    schedule.timezone,
                    schedule.encoded_payload(self._encoding),
                    schedule.priority,
                    schedule.max_attempts,
                    schedule.timeout_seconds,
                    schedule.missed,
                    schedule.first_tick(now),
                    timeout=self._db.statement_timeout,
                )

    async def fire_due_schedules(self, schedules: Sequence[Schedule]) -> tuple[list[int], float]:
        """Enqueue the due ticks of ``schedules``; return the job ids and the seconds until
        the next tick of any of them.

        Each due schedule is locked, its job enqueued and its next tick stored in one
        transaction: however many workers call this at once, a tick is enqueued once.
        Observers hear of each tick handled (``schedule_ticked``) once that commits.
        """
        by_name = {schedule.name: schedule for schedule in schedules}
        names = list(by_name)
        enqueued: list[int] = []
        ticks: list[tuple[str, str]] = []  # (schedule, result), told after the commit
        async with self._db.acquire() as conn:
            async with own_transaction(conn):
                due = await conn.fetch(DUE_SCHEDULES, names, timeout=self._db.statement_timeout)
                for row in due:
                    schedule = by_name[row["name"]]
                    tick: datetime = row["next_run_at"]
                    now: datetime = row["now"]
                    next_tick = schedule.next_tick(tick, now)
                    job_id = None
                    result = "skipped"
                    if schedule.missed == "once" or not schedule.was_missed(tick, now):
                        result = "failed"
                        try:
                            # A savepoint: a tick that cannot be enqueued (a payload its
                            # handler's model refuses) holds up no other schedule.
                            async with conn.transaction():
                                job_id = await self.enqueue(
                                    schedule.job_type,
                                    RawJSON(schedule.encoded_payload(self._encoding)),
                                    priority=schedule.priority,
                                    max_attempts=schedule.max_attempts,
                                    timeout_seconds=schedule.timeout_seconds,
                                    dedupe_key=f"schedule:{schedule.name}:{tick.isoformat()}",
                                    conn=conn,
                                )
                            enqueued.append(job_id)
                            result = "enqueued"
                        except (ValueError, TypeError, JobConflict, asyncpg.DataError) as exc:
                            logger.error(
                                "schedule %r: the tick due at %s could not be enqueued, and is "
                                "skipped (next: %s): %s",
                                schedule.name,
                                tick.isoformat(),
                                next_tick.isoformat(),
                                exc,
                                extra={"schedule": schedule.name, "job_type": schedule.job_type},
                            )
                    await conn.execute(
                        ADVANCE_SCHEDULE,
                        schedule.name,
                        tick,
                        next_tick,
                        tick if job_id is not None else None,
                        job_id,
                        timeout=self._db.statement_timeout,
                    )
                    ticks.append((schedule.name, result))
            for name, result in ticks:
                tell_each(self.observers, "schedule_ticked", name, result)
            until_next = await conn.fetchval(
                NEXT_SCHEDULE_DUE, names, timeout=self._db.statement_timeout
            )
        return enqueued, 3600.0 if until_next is None else until_next

    async def list_schedules(self) -> list[dict[str, Any]]:
        """Every stored schedule: its definition, ``next_run_at``, ``last_run_at`` (the tick
        last enqueued), ``last_job_id`` and ``declared_at`` (when a worker last declared it:
        an old one is no longer declared by any running worker)."""
        rows = await self._db.fetch(LIST_SCHEDULES)
        schedules = []
        for row in rows:
            item = dict(row)
            item["payload"] = json.loads(item["payload"])
            schedules.append(item)
        return schedules

    async def remove_schedule(self, name: str) -> bool:
        """Delete a stored schedule (one no worker declares any more). False if none."""
        status = await self._db.execute(REMOVE_SCHEDULE, name)
        return bool(status == "DELETE 1")
