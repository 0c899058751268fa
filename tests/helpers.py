"""Small helpers shared by the tests."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from pqrun import IdlePollPolicy, Job, LoopErrorPolicy, PgJobStore
from pqrun._store.queries import query

#: Worker settings for tests: short idle and error waits.
QUICK_POLICIES: dict[str, Any] = {
    "idle_policy": IdlePollPolicy(0.02, 0.05),
    "loop_error_policy": LoopErrorPolicy(0.01, 0.05),
}
#: The same, without the reaper loop (tests that reap call store.reap_stale themselves).
QUICK: dict[str, Any] = {**QUICK_POLICIES, "enable_reaper": False}


async def wait_until(
    predicate: Callable[[], Awaitable[bool]], within: float = 30.0, every: float = 0.02
) -> None:
    """Poll ``predicate`` until it is true; fail the test after ``within`` seconds.

    The default is generous: a test waits for a state, and on a busy machine anything may
    take seconds. A test that shows something happens *soon* makes the alternative take
    far longer (a poll interval of a minute, say) rather than bounding a latency.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(every)


async def status_of(store: PgJobStore, job_id: int) -> str:
    job = await store.get_job(job_id)
    assert job is not None
    return job.status.value


async def counts(conn: asyncpg.Connection) -> dict[str, int]:
    rows = await conn.fetch("SELECT status, count(*) AS n FROM jobs GROUP BY status")
    return {row["status"]: row["n"] for row in rows}


async def listener_pids(conn: asyncpg.Connection, since: datetime) -> list[int]:
    """The backends of this database that LISTEN, connected at ``since`` or later: those
    of earlier tests may not have ended yet. (A worker's LISTEN connection also reads
    the roster of live workers and the database's clock, and sends itself a probe: its
    last statement may be one of those.)"""
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND (query LIKE 'LISTEN %' OR query LIKE 'SELECT worker_id, job_types, wake_capacity%'"
        " OR query = ANY($2)) AND pid <> pg_backend_pid() AND backend_start >= $1",
        since,
        [query("listen_probe"), query("database_clock")],
    )
    return [row["pid"] for row in rows]


async def picked(store: PgJobStore, worker_id: str, job_types: Any = None) -> Job:
    job = await store.pickup(worker_id, job_types)
    assert job is not None, "expected a job to pick"
    return job


async def finished_and_created(
    dsn: str, finished_id: int, created_id: int
) -> tuple[datetime | None, datetime]:
    """When job ``finished_id`` finished, and when job ``created_id`` was created (a
    dedupe key holds only while its first job is active)."""
    conn = await asyncpg.connect(dsn)
    try:
        finished = await conn.fetchval("SELECT finished_at FROM jobs WHERE id = $1", finished_id)
        created = await conn.fetchval("SELECT created_at FROM jobs WHERE id = $1", created_id)
    finally:
        await conn.close()
    return finished, created


@asynccontextmanager
async def store_of_role(
    conn: asyncpg.Connection, dsn: str, name: str, jobs_rights: str
) -> AsyncIterator[PgJobStore]:
    """A store that connects as a new role (``name`` and a random suffix) with
    ``jobs_rights`` on jobs (e.g. "SELECT, INSERT, UPDATE") and what a worker needs on the
    rest; the role is dropped on the way out."""
    role = f"{name}_{secrets.token_hex(3)}"
    password = secrets.token_hex(8)
    await conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    try:
        await conn.execute(
            f"GRANT USAGE ON SCHEMA public TO {role};"
            f"GRANT {jobs_rights} ON jobs TO {role};"
            f"GRANT SELECT ON job_type_pauses TO {role};"
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON job_workers TO {role};"
            f"GRANT USAGE ON SEQUENCE jobs_id_seq TO {role}"
        )
        parts = urlsplit(dsn)
        netloc = f"{role}:{password}@{parts.hostname}:{parts.port}"
        limited = PgJobStore(urlunsplit(parts._replace(netloc=netloc)))
        try:
            yield limited
        finally:
            await limited.close()
    finally:
        await conn.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
