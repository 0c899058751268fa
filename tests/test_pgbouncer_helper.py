"""The throwaway PgBouncer of tests/pgbouncer.py: it starts, pools by transaction, and stops."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests.pgbouncer import (
    PgBouncer,
    PgBouncerError,
    PgBouncerUnsupported,
    find_pgbouncer,
    supports_prepared_statements,
)

pytestmark = pytest.mark.skipif(find_pgbouncer() is None, reason="pgbouncer is not installed")


def server_of(dsn: str) -> tuple[str, int]:
    parts = urlsplit(dsn)
    return parts.hostname or "127.0.0.1", parts.port or 5432


def database_of(dsn: str) -> str:
    return urlsplit(dsn).path.lstrip("/") or "postgres"


def nothing_listens(port: int) -> bool:
    # (Not a bind test: connections the bouncer closed leave the port in TIME_WAIT.)
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


async def test_transaction_pooling_and_stop(server_dsn: str) -> None:
    host, port = server_of(server_dsn)
    database = database_of(server_dsn)
    with PgBouncer(host, port, default_pool_size=1, probe_database=database) as bouncer:
        assert bouncer.process is not None
        assert bouncer.process.poll() is None
        bouncer_port = bouncer.port
        assert bouncer_port is not None
        first = await asyncpg.connect(bouncer.dsn(database), statement_cache_size=0)
        second = await asyncpg.connect(bouncer.dsn(database), statement_cache_size=0)
        try:
            # One server connection for two clients: a session setting leaks across
            # them, which is what transaction pooling means.
            await first.execute("SET application_name = 'leaks'")
            assert await second.fetchval("SHOW application_name") == "leaks"
            await first.execute("RESET application_name")
            # A startup parameter it does not know is refused.
            with pytest.raises(asyncpg.ProtocolViolationError, match="plan_cache_mode"):
                await asyncpg.connect(
                    bouncer.dsn(database), server_settings={"plan_cache_mode": "auto"}
                )
        finally:
            await first.close()
            await second.close()
        root = bouncer.root
        assert root is not None
    assert not root.exists()
    assert nothing_listens(bouncer_port)


async def test_ignored_startup_parameters(server_dsn: str) -> None:
    host, port = server_of(server_dsn)
    database = database_of(server_dsn)
    with PgBouncer(
        host,
        port,
        ignore_startup_parameters=("plan_cache_mode", "search_path"),
        database_options={"connect_query": "SET plan_cache_mode = force_generic_plan"},
        probe_database=database,
    ) as bouncer:
        conn = await asyncpg.connect(
            bouncer.dsn(database),
            statement_cache_size=0,
            server_settings={"plan_cache_mode": "auto", "search_path": "nowhere"},
        )
        try:
            # Accepted and dropped: what the server has is connect_query's, not ours.
            assert await conn.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
            assert await conn.fetchval("SHOW search_path") != "nowhere"
        finally:
            await conn.close()


def test_max_prepared_statements_needs_1_21(server_dsn: str) -> None:
    host, port = server_of(server_dsn)
    if supports_prepared_statements():
        with PgBouncer(
            host, port, max_prepared_statements=100, probe_database=database_of(server_dsn)
        ) as bouncer:
            assert "max_prepared_statements = 100" in bouncer.config(0)
    else:
        with pytest.raises(PgBouncerUnsupported, match=r"1\.21"):
            PgBouncer(max_prepared_statements=100)


def test_a_failed_start_says_why() -> None:
    bouncer = PgBouncer(settings={"no_such_setting": 1})
    with pytest.raises(PgBouncerError, match="no_such_setting"):
        bouncer.start()
    assert bouncer.root is None
    assert bouncer.process is None
