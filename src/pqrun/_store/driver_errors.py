"""How asyncpg's errors are told apart: the connection or server gone, a DSN it cannot
read, a connection refused, a value it cannot send."""

from __future__ import annotations

import asyncpg

from pqrun.errors import DatabaseUnavailable

from .secrets import URL_DSN

# Errors that say the connection or the server went away, rather than that a statement
# was wrong. They become DatabaseUnavailable for the caller.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.InterfaceError,
    # "cannot switch to state ...; another operation is in progress": an idle pooled
    # connection that received the server's shutdown notice is handed out just before
    # its socket closes (seen once in 545 tests' run of test_outage.py under load).
    asyncpg.exceptions._base.InternalClientError,
)

# What asyncpg raises for a DSN it cannot read: urllib's and ipaddress's ValueError
# (whose text may quote part of the password: a password holding [ ] is read as an IPv6
# address), OverflowError for a port out of range.
DSN_ERRORS: tuple[type[BaseException], ...] = (ValueError, OverflowError)

# Errors of opening a connection that say the server is not there (or not for us: no
# such role or database), or that the DSN does not say where it is.
CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    *DSN_ERRORS,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidCatalogNameError,
)

# A value asyncpg cannot encode for its parameter (an InterfaceError, so it would pass
# for a connection error): the data is refused, nothing is wrong with the connection.
ClientDataError = asyncpg.exceptions._base.DataError


def refused(
    exc: BaseException, database: str, described: str, *, dsn: str, pooler: bool
) -> DatabaseUnavailable:
    """The error for a connection to ``database`` that failed with ``exc`` (shown as
    ``described``, without passwords), with the fix for its likely cause."""
    where = f"cannot connect to PostgreSQL at {database}"
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return DatabaseUnavailable(f"{where}: {described}. Create the database or fix the DSN")
    if isinstance(exc, asyncpg.ProtocolViolationError) and "startup parameter" in str(exc):
        fix = (
            "remove that setting from server_settings (a pooler passes none on)"
            if pooler
            else "if the DSN goes through PgBouncer or another transaction pooler, "
            "pass pooler=True to PgJobStore (or set PQRUN_POOLER=true)"
        )
        return DatabaseUnavailable(
            f"{where}: {described}. A connection pooler in front of PostgreSQL "
            f"refused a setting sent at connect: {fix} (docs/deployment.md)"
        )
    if dsn and URL_DSN.match(dsn) is None:
        # asyncpg reads URLs only; libpq's host=... form fails as "invalid DSN".
        where += " (write the DSN as a URL: postgresql://user:password@host:port/db)"
    return DatabaseUnavailable(
        f"{where}: {described}. Check that the server is running and that the DSN "
        "(dsn=, PQRUN_DSN or DATABASE_URL) names the right host, port, user and database"
    )
