"""Settings on connections whose session pqrun does not keep to itself.

Schema names, and pointing a connection's search_path at a store's schema: a store with
``schema=`` gets ``search_path`` set at connect on connections of its own; on anyone
else's (one passed to a store call, one of a caller's pool, a DB-API cursor of
pqrun.sync) the path is switched for the statement and put back after.

Through a transaction pooler nothing can be set at connect: ``per_transaction`` runs a
statement in a transaction of its own with the settings made local to it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

from .queries import dbapi_query, query

if TYPE_CHECKING:
    from .connections import Connection

SET_LOCAL = query("set_local")
SWITCH_SEARCH_PATH = query("switch_search_path")
RESTORE_SEARCH_PATH = query("restore_search_path")
# The same two for a DB-API connection (pqrun.sync).
SWITCH_SEARCH_PATH_DBAPI = dbapi_query("switch_search_path", ("path",))
RESTORE_SEARCH_PATH_DBAPI = dbapi_query("restore_search_path", ("path",))

# A schema name pqrun accepts: lower case, so that it means the same quoted or not in
# psql and SQL, and at most 63 bytes, PostgreSQL's limit for a name.
SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def check_schema_name(schema: str) -> str:
    """Return ``schema`` if it is a usable schema name, else raise ValueError."""
    if not isinstance(schema, str) or not SCHEMA_NAME.fullmatch(schema):
        raise ValueError(
            f"schema must be a lower-case name of letters, digits and underscores "
            f"starting with a letter or underscore (at most 63), got {schema!r}"
        )
    if schema.startswith("pg_"):
        raise ValueError(f"schema {schema!r}: names starting with pg_ are PostgreSQL's own")
    return schema


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier (for search_path, which takes no parameters)."""
    return '"' + name.replace('"', '""') + '"'


@asynccontextmanager
async def in_search_path(
    conn: Connection,
    search_path: str,
    statement_timeout: float,
    ignore_on_restore: tuple[type[BaseException], ...],
) -> AsyncIterator[None]:
    """Run the block with ``conn``'s search_path set to ``search_path``, then put it back.

    ``ignore_on_restore``: errors of the restore that are not the caller's (after an
    error inside the caller's transaction the restore cannot run, and need not: the
    rollback puts the search_path back as well).
    """
    row = await conn.fetchrow(SWITCH_SEARCH_PATH, search_path, timeout=statement_timeout)
    assert row is not None
    if row["was"] == row["now"]:
        yield  # already there (a connection of the store's own pool)
        return
    try:
        yield
    finally:
        with contextlib.suppress(*ignore_on_restore):
            await conn.fetchval(RESTORE_SEARCH_PATH, row["was"], timeout=statement_timeout)


@asynccontextmanager
async def per_transaction(
    conn: Connection, settings: Mapping[str, str], statement_timeout: float
) -> AsyncIterator[None]:
    """Run the block in a transaction with ``settings`` local to it (``SET LOCAL``).

    Inside a transaction already, they are set for the rest of that one.
    """
    if conn.is_in_transaction():
        await conn.fetchval(SET_LOCAL, list(settings), list(settings.values()))
        yield
        return
    async with conn.transaction():
        await conn.fetchval(
            SET_LOCAL, list(settings), list(settings.values()), timeout=statement_timeout
        )
        yield


@contextmanager
def dbapi_in_schema(cursor: Any, schema: str | None) -> Iterator[None]:
    """``in_search_path`` for a DB-API cursor (pqrun.sync): the block runs with the
    cursor's search_path set to ``schema`` alone (None: left as it is)."""
    if schema is None:
        yield
        return
    path = quote_ident(check_schema_name(schema))
    cursor.execute(SWITCH_SEARCH_PATH_DBAPI, {"path": path})
    was, now = cursor.fetchone()
    if was == now:
        yield  # already there
        return
    try:
        yield
    except BaseException:
        # In a transaction the failed statement aborted, the restore cannot run, and
        # the caller's rollback puts the search_path back itself.
        with contextlib.suppress(Exception):
            _restore_dbapi_search_path(cursor, was)
        raise
    _restore_dbapi_search_path(cursor, was)


def _restore_dbapi_search_path(cursor: Any, path: str) -> None:
    cursor.execute(RESTORE_SEARCH_PATH_DBAPI, {"path": path})
    cursor.fetchone()
