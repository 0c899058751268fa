"""``pqrun demo``: enqueue a few jobs, run them, print what happened.

Uses $PQRUN_DSN/$DATABASE_URL, else the server on 127.0.0.1:5432, else a private
throwaway PostgreSQL (system binaries, or the ``embedded`` extra). Works in a schema of
its own, dropped at the end, so it never touches an existing jobs table.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import Any

import asyncpg

from ._localpg import find_or_start
from ._store.driver_errors import CONNECT_ERRORS
from ._store.secrets import cause_without_secrets, error_text, redact_dsn
from .errors import DatabaseUnavailable, Retry
from .handlers import JobContext
from .policies import IdlePollPolicy
from .store import PgJobStore
from .worker import Worker


async def greet(ctx: JobContext) -> str:
    return f"Hello, {ctx.job.payload['name']}!"


async def add(ctx: JobContext) -> int:
    return sum(ctx.job.payload["numbers"])


async def flaky(ctx: JobContext) -> str:
    if ctx.attempt == 1:
        raise Retry(reason="the first attempt always fails, to show a retry")
    return f"succeeded on attempt {ctx.attempt}"


async def place_order(ctx: JobContext) -> dict[str, Any]:
    order = ctx.job.payload["order"]
    receipt = await ctx.store.enqueue("send_receipt", {"order": order})
    return {"order": order, "receipt_job": receipt}


def send_receipt(ctx: JobContext) -> str:
    # A plain function: runs in a thread, so blocking calls are fine here.
    return f"receipt for order {ctx.job.payload['order']} sent"


async def run_demo(say: Callable[[str], None] = print) -> None:
    dsn, how, server = await find_or_start()
    say(f"pqrun demo: using {how} ({redact_dsn(dsn)})")
    schema = f"pqrun_demo_{secrets.token_hex(3)}"
    try:
        admin = await asyncpg.connect(dsn, timeout=10)
    except CONNECT_ERRORS as exc:
        raise DatabaseUnavailable(
            f"cannot connect to {redact_dsn(dsn)} ({error_text(exc, dsn)}). Fix {how}, "
            "or unset it to let the demo find or start a PostgreSQL of its own"
        ) from cause_without_secrets(exc, dsn)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        store = PgJobStore(dsn, server_settings={"search_path": schema})
        await store.setup()
        try:
            await _enqueue_and_run(store, say)
        finally:
            await store.close()
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()
        if server is not None:
            await asyncio.to_thread(server.destroy)


async def _enqueue_and_run(store: PgJobStore, say: Callable[[str], None]) -> None:
    await store.enqueue("greet", {"name": "world"})
    await store.enqueue("add", {"numbers": [1, 2, 3, 4]}, priority=10)
    await store.enqueue("flaky", {})
    first = await store.enqueue("place_order", {"order": 1001}, dedupe_key="order:1001")
    duplicate = await store.enqueue("place_order", {"order": 1001}, dedupe_key="order:1001")
    say(f"enqueued 4 jobs (the second order:1001 was deduplicated: {duplicate} == {first})")

    worker = Worker(
        store=store,
        handlers={
            "greet": greet,
            "add": add,
            "flaky": flaky,
            "place_order": place_order,
            "send_receipt": send_receipt,
        },
        concurrency=4,
        idle_policy=IdlePollPolicy(base_seconds=0.05, max_seconds=0.5),
        worker_id="demo-worker",
        delete_done=False,  # the demo lists its finished jobs
    )
    ran = await worker.drain()
    say(f"the worker recorded {ran} outcomes (one retry and one chained job included)\n")
    say(f"{'id':>3}  {'job_type':<13} {'status':<7} {'attempts':>8}  result")
    for job in sorted(await store.list_jobs(), key=lambda j: j.id):
        say(f"{job.id:>3}  {job.job_type:<13} {job.status:<7} {job.attempts:>8}  {job.result}")
