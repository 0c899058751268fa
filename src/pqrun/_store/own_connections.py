"""The connections pqrun opens for itself, outside any pool.

Workers keep their liveness, their outcome writes and their LISTEN on such connections,
so that handlers holding every pooled connection cannot starve them; a vacuum runs on
two. They carry the store's settings (``plan_cache_mode``; the schema's ``search_path``
on the store's own) and a few of their own (the outcome writer's ``lock_timeout``).

Through a transaction pooler (``PgJobStore(pooler=True)``) a connection is not a
session: nothing can be set at connect, so settings are made local to each statement's
transaction instead. What needs a session of its own (LISTEN, VACUUM) or must not wait
for the pooler's server connections (heartbeats) goes to ``direct_dsn``, a DSN that
reaches PostgreSQL itself; without one, workers poll, autovacuum is left to vacuum, and
heartbeats go through the pooler (said once).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import asyncpg

from pqrun.errors import DatabaseUnavailable

from .connections import OwnConnection
from .driver_errors import CONNECT_ERRORS
from .given_pool import POOL_ONLY
from .schema_objects import IDENTITY
from .secrets import cause_without_secrets, error_text, redact_dsn

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from .connections import Connection, StoreConnections


logger = logging.getLogger("pqrun")

# connect() keywords that say where and as whom, by the part of a URL DSN that says it.
ADDRESS_KEYWORDS = {
    "host": ("host",),
    "port": ("port",),
    "user": ("user",),
    "password": ("password", "passfile"),
    "database": ("database",),
}


def parts_given_by(dsn: str) -> set[str]:
    """The connect() keywords whose part ``dsn`` names itself (all of them when it is
    not a URL): asyncpg lets keywords win over the DSN, so these must not come along."""
    try:
        url = urlsplit(dsn)
        named = {
            "host": url.hostname,
            "port": url.port,
            "user": url.username,
            "password": url.password,
            "database": url.path.strip("/"),
        }
    except ValueError:
        named = dict.fromkeys(ADDRESS_KEYWORDS, "?")
    if not dsn.startswith(("postgres://", "postgresql://")):
        named = dict.fromkeys(ADDRESS_KEYWORDS, "?")
    return {keyword for part, value in named.items() if value for keyword in ADDRESS_KEYWORDS[part]}


class NoSession(DatabaseUnavailable):
    """A session of its own is needed (LISTEN), and a transaction pooler gives none."""


def can_have_sessions(db: StoreConnections) -> bool:
    """True when pqrun can open a connection that keeps its session (LISTEN, VACUUM)."""
    return not db.pooler or db.direct_dsn is not None


def no_session(db: StoreConnections, purpose: str) -> NoSession:
    return NoSession(
        f"{purpose} needs a session of its own, which a transaction pooler does not give; "
        "pass direct_dsn= (a DSN that reaches PostgreSQL itself) to PgJobStore, or set "
        "PQRUN_DIRECT_DSN (docs/deployment.md)"
    )


async def dedicated_connection(
    db: StoreConnections,
    purpose: str,
    server_settings: Mapping[str, str] | None = None,
    *,
    session: bool = False,
) -> Connection:
    """A connection of its own, outside the pool, with the store's settings (schema).

    ``server_settings`` are added to the store's own; through a transaction pooler they
    are set for each statement's transaction instead (``StoreConnections.acquire``).
    The caller closes it.
    """
    await db.lazy_start()
    if not db.pooler:
        return await _connect(db, purpose, db.dsn, db.pool_kwargs, server_settings)
    if session and db.direct_dsn is not None:
        # Past the pooler: through it, a worker's heartbeats would wait for server
        # connections that its handlers' transactions hold, and the reaper would take
        # back jobs that are running. (Outcome writes may wait: a job whose outcome is
        # not written yet is still heartbeated, and one direct connection less per
        # worker keeps many workers within max_connections.)
        return await session_connection(db, purpose, server_settings)
    if session and "shared liveness" not in db.said:
        db.said.add("shared liveness")
        logger.warning(
            "%s goes through the transaction pooler (no direct_dsn): while handlers' "
            "transactions hold every server connection the pooler has, heartbeats wait, "
            "and a worker may lose jobs it is running to the reaper. Give PgJobStore a "
            "direct_dsn, or size the pooler's pool above the workers' concurrency + 3 "
            "each (docs/deployment.md)",
            purpose,
        )
    conn = await _connect(db, purpose, db.dsn, db.pool_kwargs, None)
    if server_settings:
        conn.per_transaction_settings = dict(server_settings)
    return conn


async def session_connection(
    db: StoreConnections, purpose: str, server_settings: Mapping[str, str] | None = None
) -> Connection:
    """A connection whose session is its own (for LISTEN, VACUUM): ``direct_dsn``
    through a transaction pooler (NoSession without it), else as dedicated_connection."""
    if not db.pooler:
        return await dedicated_connection(db, purpose, server_settings)
    if db.direct_dsn is None:
        raise no_session(db, purpose)
    await db.lazy_start()
    # Straight to PostgreSQL: the store's own settings can be sent at connect again. The
    # DSN says where, and as whom: the pool's address and credentials are not for it.
    given = parts_given_by(db.direct_dsn)
    kwargs = {k: v for k, v in db.pool_kwargs.items() if k not in given}
    kwargs["server_settings"] = {**db.own_settings, **_settings_of(db)}
    kwargs.pop("statement_cache_size", None)
    return await _connect(db, purpose, db.direct_dsn, kwargs, server_settings)


async def listen(
    db: StoreConnections,
    on_payload: Callable[[str], None],
    connect: Callable[[str], Awaitable[Connection]] | None = None,
) -> Connection:
    """A dedicated connection LISTENing on this store's channel (for workers).

    ``on_payload`` gets each notification's payload: empty when jobs are due now,
    else the epoch of the earliest ``run_after`` of a batch of future jobs. ``connect``:
    how to open it (the store's dedicated_connection, which a subclass may wrap); through
    a transaction pooler it is always a session_connection.
    """
    purpose = "a LISTEN connection"
    if db.pooler or connect is None:
        conn = await session_connection(db, purpose)
    else:
        conn = await connect(purpose)
    try:
        await conn.add_listener(db.channel, lambda _c, _pid, _ch, payload: on_payload(payload))
    except BaseException:
        conn.terminate()
        raise
    return conn


def _settings_of(db: StoreConnections) -> dict[str, str]:
    settings: dict[str, str] = db.pool_kwargs.get("server_settings") or {}
    return settings


async def _connect(
    db: StoreConnections,
    purpose: str,
    dsn: str,
    kwargs: Mapping[str, Any],
    server_settings: Mapping[str, str] | None,
) -> OwnConnection:
    connect_kwargs = {k: v for k, v in kwargs.items() if k not in POOL_ONLY}
    if server_settings:
        connect_kwargs["server_settings"] = {
            **connect_kwargs.get("server_settings", {}),
            **server_settings,
        }
    direct = dsn != db.dsn
    where = f"the direct_dsn {redact_dsn(dsn)}" if direct else db.database()
    try:
        conn: OwnConnection = await asyncpg.connect(
            dsn or None,
            timeout=db.connect_timeout,
            connection_class=OwnConnection,
            **connect_kwargs,
        )
    except CONNECT_ERRORS as exc:
        if not direct:
            raise DatabaseUnavailable(
                f"cannot open {purpose} to {where}: {db.describe(exc)}"
            ) from db.cause(exc)
        raise DatabaseUnavailable(
            f"cannot open {purpose} to {where}: {error_text(exc, dsn, *db.secrets)}"
        ) from cause_without_secrets(exc, dsn, *db.secrets)
    if db.identity is not None and (direct or db.given_pool is not None):
        await _check_same_database(db, conn, purpose, where)
    return conn


async def _check_same_database(
    db: StoreConnections, conn: OwnConnection, purpose: str, where: str
) -> None:
    """Close ``conn`` and raise unless it reaches the server, database and jobs table of
    the store's pool: heartbeats or outcomes sent elsewhere would let the reaper take
    back jobs that are running."""
    try:
        row = await conn.fetchrow(db.sql(IDENTITY), timeout=db.statement_timeout)
        reached = None if row is None else (row["server"], row["database"], row["jobs_oid"])
        if reached != db.identity:
            # The table may have been made anew (setup() again, a restore) since the
            # store started: look again through the pool before refusing.
            async with db.acquire(join=False) as pooled:
                again = await pooled.fetchrow(IDENTITY, timeout=db.statement_timeout)
            if again is not None:
                db.identity = (again["server"], again["database"], again["jobs_oid"])
    except BaseException:
        conn.terminate()
        raise
    if reached == db.identity:
        return
    conn.terminate()
    expected = db.identity or (None, "?", 0)
    got = reached or (None, "?", 0)
    differs = (
        f"another server (system identifier {got[0]}, the pool's {expected[0]})"
        if got[0] != expected[0]
        else f"database {got[1]!r}, the pool's {expected[1]!r}"
        if got[1] != expected[1]
        else "another jobs table in the same database (another schema in its search_path?)"
    )
    raise DatabaseUnavailable(
        f"{purpose} to {where} reaches {differs}: the DSN for pqrun's own connections "
        "(dsn= beside pool=, or direct_dsn=) must name the same server and database as "
        "the pool"
    )
