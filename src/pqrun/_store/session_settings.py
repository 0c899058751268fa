"""Schema names, and settings on connections whose session pqrun does not keep to itself.

A store with ``schema=`` runs its statements schema-qualified (queries.qualified), so
nothing needs to touch a connection's search_path for them. Through a transaction
pooler nothing can be set at connect: ``per_transaction`` runs a statement in a
transaction of its own with settings local to it. pqrun's own transactions are READ
COMMITTED whatever the session's default (``own_transaction``).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, TypeVar

import asyncpg

from .queries import query

if TYPE_CHECKING:
    from asyncpg.transaction import Transaction

    from .connections import Connection, StoreConnections

T = TypeVar("T")

#: What the worker's own connections (outcome writer, heartbeats) are opened with:
#: their statements' guards are written for READ COMMITTED (see own_transaction).
READ_COMMITTED = {"default_transaction_isolation": "read committed"}

SET_LOCAL = query("set_local")

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


def own_transaction(conn: Connection) -> Transaction:
    """A transaction of pqrun's own statements: READ COMMITTED, which their guards are
    written for, whatever the session's default. A server, database or role may make
    transactions REPEATABLE READ or SERIALIZABLE by default, under which a row another
    worker changed after the transaction's snapshot fails the statement ("could not
    serialize access") where READ COMMITTED reads it again. Inside a transaction of the
    caller's, a savepoint of that one (whatever its isolation)."""
    if conn.is_in_transaction():
        return conn.transaction()
    return conn.transaction(isolation="read_committed")


async def read_committed(
    db: StoreConnections, conn: Connection, statement: Callable[[], Awaitable[T]]
) -> T:
    """Run one guarded statement of pqrun's (``statement()``) as READ COMMITTED, which its
    guard is written for: on its own where that is the default (one round trip), else in
    a READ COMMITTED transaction of its own (BEGIN and COMMIT, two more). Under REPEATABLE
    READ or SERIALIZABLE, a row changed by a transaction that committed after the
    statement's snapshot (a worker's claim the statement waited for) fails it ("could not
    serialize access"), where READ COMMITTED reads the row again and applies the guard.
    The store learns the default when it starts; a statement that still fails so (the
    default changed since) changed nothing, and runs again in such a transaction, as do
    the later ones. Inside a transaction of the caller's, it runs as it is, in that one.
    """
    if conn.is_in_transaction():
        return await statement()
    if db.read_committed:
        try:
            return await statement()
        except asyncpg.SerializationError:
            db.read_committed = False
    async with own_transaction(conn):
        return await statement()


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
    async with own_transaction(conn):
        await conn.fetchval(
            SET_LOCAL, list(settings), list(settings.values()), timeout=statement_timeout
        )
        yield
