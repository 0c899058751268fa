"""Fixtures: a real PostgreSQL, a fresh database per test session, a clean jobs table per test.

The server comes from PQRUN_TEST_DSN, else DATABASE_URL/PQRUN_DSN, else 127.0.0.1:5432,
else a throwaway cluster started from the system's initdb/pg_ctl.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pqrun import PgJobStore, ddl_sql, tracing
from pqrun._localpg import ThrowawayCluster, find_or_start


def with_database(dsn: str, database: str) -> str:
    """The same server and user, another database."""
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """A DSN for the server the tests use (any database on it)."""
    explicit = os.environ.get("PQRUN_TEST_DSN")
    if explicit:
        yield explicit
        return
    dsn, _how, server = asyncio.run(find_or_start(allow_embedded=False))
    try:
        yield dsn
    finally:
        if server is not None:
            server.destroy()


@pytest.fixture(scope="session")
def dsn(server_dsn: str) -> Iterator[str]:
    """A database made for this test session, with the schema applied; dropped at the end."""
    name = f"pqrun_test_{secrets.token_hex(4)}"

    async def create() -> None:
        conn = await asyncpg.connect(server_dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        conn = await asyncpg.connect(with_database(server_dsn, name))
        try:
            await conn.execute(ddl_sql())
        finally:
            await conn.close()

    async def drop() -> None:
        conn = await asyncpg.connect(server_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(create())
    try:
        yield with_database(server_dsn, name)
    finally:
        asyncio.run(drop())


async def reset_jobs(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "TRUNCATE jobs, job_workers, job_rate_limits, job_schedules, job_type_minutes, "
            "job_type_pauses RESTART IDENTITY"
        )
    finally:
        await conn.close()


@pytest.fixture
async def store(dsn: str) -> AsyncIterator[PgJobStore]:
    """A started store on an empty jobs table."""
    await reset_jobs(dsn)
    job_store = PgJobStore(dsn)
    await job_store.start()
    try:
        yield job_store
    finally:
        await job_store.close()


@pytest.fixture
async def other(dsn: str, store: PgJobStore) -> AsyncIterator[PgJobStore]:
    """A second store with its own pool: the other actor (worker B, the reaper, an admin)."""
    second = PgJobStore(dsn)
    await second.start()
    try:
        yield second
    finally:
        await second.close()


@pytest.fixture
async def conn(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection for looking at the table behind the store's back."""
    connection = await asyncpg.connect(dsn)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def private_cluster() -> Iterator[ThrowawayCluster]:
    """A throwaway cluster of our own, for tests that stop and restart the server."""
    cluster = ThrowawayCluster().init().start()
    try:
        asyncio.run(_apply_schema(cluster.dsn))
        yield cluster
    finally:
        cluster.destroy()


async def _apply_schema(dsn: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(ddl_sql())
    finally:
        await connection.close()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """pqrun's spans finished during the test (an SDK provider of the test's own)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_tracer_provider(provider)
    try:
        yield exporter
    finally:
        tracing.use_tracer_provider(None)
        provider.shutdown()


@pytest.fixture
async def schemas(dsn: str) -> AsyncIterator[Callable[[], str]]:
    """Fresh schema names; the schemas made under them are dropped after the test."""
    made: list[str] = []

    def new_name() -> str:
        made.append(f"ns_{secrets.token_hex(3)}")
        return made[-1]

    yield new_name
    conn = await asyncpg.connect(dsn)
    try:
        for name in made:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()
