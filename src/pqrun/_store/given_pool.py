"""A caller's pool (``PgJobStore(pool=...)``): what it is checked for, and how pqrun's
own connections learn from it where to connect and which passwords never to show."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import asyncpg

from pqrun.errors import DatabaseUnavailable

from .driver_errors import CONNECT_ERRORS
from .secrets import dsn_passwords

logger = logging.getLogger("pqrun")

# create_pool arguments that asyncpg.connect does not take.
POOL_ONLY = frozenset({"setup", "init", "reset", "max_queries", "max_inactive_connection_lifetime"})


def where_to_connect(
    dsn: str | None, pool: asyncpg.Pool[Any] | None, pool_kwargs: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """The DSN and connect() keywords of a store: given, from the caller's pool, or from
    the environment."""
    if pool is None:
        dsn = dsn or os.environ.get("PQRUN_DSN") or os.environ.get("DATABASE_URL")
        if not dsn:
            raise ValueError(
                "PgJobStore needs a PostgreSQL DSN: pass dsn='postgresql://user@host/db' "
                "or pool=an_asyncpg_pool, or set PQRUN_DSN or DATABASE_URL"
            )
        return dsn, pool_kwargs
    if not isinstance(pool, asyncpg.Pool):
        raise TypeError(
            f"PgJobStore(pool=...) takes an asyncpg pool (asyncpg.create_pool), "
            f"got {type(pool).__name__}"
        )
    if pool_kwargs:
        raise ValueError(
            "PgJobStore(pool=...) uses your pool as it is: give "
            f"{', '.join(sorted(pool_kwargs))} to asyncpg.create_pool instead"
        )
    if dsn is not None:
        return dsn, {}
    if getattr(pool, "_connect", asyncpg.connect) is not asyncpg.connect:
        raise ValueError(
            "this pool opens its connections with a connect= function of its own, which "
            "pqrun cannot reuse for a worker's own connections (heartbeats, outcome "
            "writes, LISTEN): pass the DSN too, PgJobStore(dsn='postgresql://...', pool=pool)"
        )
    # pqrun's own connections (a worker's liveness, outcome writes, LISTEN) open as the
    # pool's do, unless a dsn says where (a direct one, past a pooler).
    pool_dsn, pool_connect_kwargs = connect_arguments_of(pool)
    return pool_dsn or "", {k: v for k, v in pool_connect_kwargs.items() if k not in POOL_ONLY}


def secrets_of(
    pool: asyncpg.Pool[Any] | None, pool_kwargs: Mapping[str, Any], direct_dsn: str | None
) -> tuple[str, ...]:
    found = [pool_kwargs.get("password"), *dsn_passwords(direct_dsn)]
    if pool is not None:
        with contextlib.suppress(ValueError):
            pool_dsn, pool_connect_kwargs = connect_arguments_of(pool)
            found += [pool_connect_kwargs.get("password"), *dsn_passwords(pool_dsn)]
    return tuple(secret for secret in found if isinstance(secret, str) and secret)


def connect_arguments_of(pool: asyncpg.Pool[Any]) -> tuple[str | None, dict[str, Any]]:
    """The DSN and connect() keywords ``pool`` opens its connections with.

    asyncpg keeps them in private attributes (set by create_pool and set_connect_args);
    without them, pqrun's own connections need ``PgJobStore(dsn=..., pool=...)``.
    """
    args = getattr(pool, "_connect_args", None)
    kwargs = getattr(pool, "_connect_kwargs", None)
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
        raise ValueError(
            "cannot read how this pool connects: pass the DSN too, "
            "PgJobStore(dsn='postgresql://...', pool=pool)"
        )
    dsn = args[0] if args and isinstance(args[0], str) else None
    return dsn, dict(kwargs)


async def open_given_pool(
    pool: asyncpg.Pool[Any],
    loop: asyncio.AbstractEventLoop,
    cannot_connect: Callable[[BaseException], DatabaseUnavailable],
    cause: Callable[[BaseException], BaseException | None],
    connections_wanted: int,
) -> None:
    """Check the caller's pool (``PgJobStore(pool=...)``), initializing it if it was
    not awaited yet."""
    if pool.is_closing():
        raise DatabaseUnavailable(
            "the pool given to PgJobStore(pool=...) is closed: close it after the "
            "store and its workers (or give the store a pool that is open)"
        )
    if getattr(pool, "_loop", loop) is not loop:
        raise RuntimeError(
            "the pool given to PgJobStore(pool=...) belongs to another event loop: "
            "create it in the loop that uses the store (inside asyncio.run or the "
            "app's lifespan)"
        )
    try:
        await pool  # does nothing for a pool that was awaited already
    except CONNECT_ERRORS as exc:
        raise cannot_connect(exc) from cause(exc)
    if connections_wanted and pool.get_max_size() < connections_wanted + 2:
        logger.warning(
            "the pool given to PgJobStore(pool=...) holds at most %d connections; the "
            "workers on this store may use %d at once (concurrency + 2): handlers that "
            "take one will wait for each other",
            pool.get_max_size(),
            connections_wanted + 2,
        )
