"""Flow control per job type, across every worker on the database.

    DATABASE_URL=postgresql://user@host/db python -m examples.flow_control

- ``call_partner_api``: at most 2 calls at once and 5 started per second, however many
  workers run (the partner's limits).
- ``sync_customer``: one sync per customer at a time; different customers in parallel.
- ``rebuild_index``: never two at once (a limit of 1).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pqrun import Handler, JobContext, PgJobStore, Snooze, Worker, handler


async def call_partner_api(ctx: JobContext) -> dict[str, Any]:
    await asyncio.sleep(0.05)  # the HTTP call
    if ctx.payload.get("partner_busy"):
        # Not a failure: come back in a second without using an attempt.
        raise Snooze(after=1)
    return {"order": ctx.payload["order"], "accepted": True}


@handler(concurrency_limit_per_key=1)
async def sync_customer(ctx: JobContext) -> str:
    # Jobs enqueued with concurrency_key=f"customer:{id}" never overlap per customer.
    await asyncio.sleep(0.02)
    return f"synced {ctx.job.concurrency_key}"


@handler(concurrency_limit=1)
async def rebuild_index(ctx: JobContext) -> str:
    await asyncio.sleep(0.02)
    return "rebuilt"


HANDLERS = {
    "call_partner_api": Handler(call_partner_api, concurrency_limit=2, rate_limit=5),
    "sync_customer": sync_customer,
    "rebuild_index": rebuild_index,
}


async def enqueue_some(store: PgJobStore) -> list[int]:
    """A burst of work, as an app would enqueue it."""
    jobs: list[dict[str, Any]] = [
        {"job_type": "call_partner_api", "payload": {"order": n}} for n in range(10)
    ]
    jobs += [
        {"job_type": "sync_customer", "concurrency_key": f"customer:{n % 3}"} for n in range(9)
    ]
    jobs += [{"job_type": "rebuild_index"} for _ in range(3)]
    return await store.enqueue_many(jobs)


async def main() -> None:
    async with PgJobStore() as store:  # the DSN comes from PQRUN_DSN or DATABASE_URL
        await enqueue_some(store)
        worker = Worker(store=store, handlers=HANDLERS, concurrency=8)
        print(f"ran {await worker.drain()} jobs within their limits")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(main())
