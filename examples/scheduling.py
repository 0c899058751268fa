"""Recurring jobs declared next to the handlers, with no pg_cron needed.

    DATABASE_URL=postgresql://user@host/db python -m examples.scheduling

Run as many copies as you like: each tick is enqueued once. Stop one for an hour and
start it again: the missed nightly cleanup is enqueued once, not once per missed tick.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

from pqrun import JobContext, PgJobStore, Schedule, Worker


async def cleanup_sessions(ctx: JobContext) -> dict[str, Any]:
    # The payload comes from the Schedule; ctx.job.dedupe_key names the tick.
    return {"deleted_older_than_days": ctx.payload["older_than_days"]}


async def refresh_rates(ctx: JobContext) -> str:
    return "rates refreshed"


SCHEDULES = [
    # 03:00 in Paris, whatever the season (the DST changes are handled).
    Schedule(
        "cleanup_sessions",
        cron="0 3 * * *",
        timezone="Europe/Paris",
        payload={"older_than_days": 30},
    ),
    # Every five minutes; a tick missed while no worker ran is skipped, not caught up.
    Schedule("refresh_rates", every=timedelta(minutes=5), missed="skip"),
]


def build_worker(store: PgJobStore) -> Worker:
    return Worker(
        store=store,
        handlers={"cleanup_sessions": cleanup_sessions, "refresh_rates": refresh_rates},
        schedules=SCHEDULES,
    )


async def main() -> None:
    store = PgJobStore()  # the DSN comes from PQRUN_DSN or DATABASE_URL
    worker = build_worker(store)
    await worker.run()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(main())
