"""Pausing a job type cluster-wide: the operators' audience (``pqrun pause``, the
dashboard's job type page).

A paused type's row in ``job_type_pauses`` is the pause itself. Every claim statement
passes over the READY jobs of a type that has one, in the same statement, so no worker
of this release, whatever its configuration, claims them while it is there (workers of
earlier releases do not read the table); jobs already claimed finish. The pause
outlives every worker's restart, and resuming deletes the row and wakes the workers.
docs/operations.md has the how-to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pqrun.limits import check_int, check_text

from .queries import query

if TYPE_CHECKING:
    from .connections import StoreConnections

PAUSE_TYPE = query("pause_type")
RESUME_TYPE = query("resume_type")
PAUSED_TYPES = query("paused_types")

#: ``paused_types()`` lists at most this many by default.
PAUSED_TYPES_LIMIT = 1000
#: A pause's reason is kept to this many characters (it is shown on one line).
REASON_LIMIT = 1000


def checked_job_type(job_type: Any) -> str:
    """``job_type`` as a pause may name it: a non-empty string PostgreSQL can store."""
    if not isinstance(job_type, str) or not job_type:
        raise ValueError(f"job_type must be a non-empty string, got {job_type!r}")
    return check_text("job_type", job_type)


class PauseMethods:
    """PgJobStore's pause, resume and paused_types."""

    _db: StoreConnections

    async def pause(self, job_type: str, *, reason: str | None = None) -> bool:
        """Pause ``job_type`` across every worker of this queue: from the commit on, no
        claim takes its READY jobs (they stay READY; new ones are enqueued as usual).

        Jobs of the type already claimed run to their end, including the few a worker
        may hold in its buffer, and a claim under way at that moment may still take
        some. The pause lasts until ``resume()``, whatever restarts. Returns True if
        this paused the type, False if it was paused already (its first ``reason`` and
        time stay). ``reason`` (at most 1,000 characters) is shown by ``pqrun status``
        and the dashboard.
        """
        checked_job_type(job_type)
        if reason is not None:
            if not isinstance(reason, str):
                raise TypeError(f"reason must be a string or None, got {reason!r}")
            if len(reason) > REASON_LIMIT:
                raise ValueError(
                    f"reason is {len(reason):,} characters long: give at most {REASON_LIMIT:,}"
                )
            check_text("reason", reason)
        paused = await self._db.fetchval(PAUSE_TYPE, job_type, reason or None)
        return paused is not None

    async def resume(self, job_type: str) -> bool:
        """End the pause of ``job_type`` and wake the idle workers, so that its due jobs
        are claimed at once. Returns False if the type was not paused."""
        checked_job_type(job_type)
        # The channel is read once connected: starting the store may learn it.
        async with self._db.acquire() as conn:
            resumed = await conn.fetchval(
                RESUME_TYPE, job_type, self._db.channel, timeout=self._db.statement_timeout
            )
        return resumed is not None

    async def paused_types(self, limit: int = PAUSED_TYPES_LIMIT) -> list[dict[str, Any]]:
        """The paused job types by name, at most ``limit``: dicts of ``job_type``,
        ``paused_at`` (the database's time) and ``reason`` (None when none was given)."""
        check_int("limit", limit, 1)
        rows = await self._db.fetch(PAUSED_TYPES, limit)
        return [dict(row) for row in rows]
