"""The connections every statement of the store runs on, and the errors it translates.

One ``StoreConnections`` per store: its pool (opened on first use, in the running event
loop), the statement timeout, the schema's search_path (set on the pool's connections,
and switched for one statement on a connection the caller passes in), the open
``connection()``/``transaction()`` block that store calls join, the dedicated
connections outside the pool, and the translation of a lost server into
DatabaseUnavailable (a value the driver cannot send, ClientDataError, stays as it is).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import asyncpg

from pqrun._config import env_bool
from pqrun.errors import DatabaseUnavailable, SchemaMissing

from .driver_errors import (
    CONNECT_ERRORS,
    CONNECTION_ERRORS,
    DSN_ERRORS,
    ClientDataError,
    refused,
)
from .given_pool import open_given_pool, secrets_of, where_to_connect
from .pool_floor import quiet_pool_floor_warnings
from .queries import Qualified, qualified_statements
from .secrets import cause_without_secrets, error_text, redact_dsn
from .session_settings import check_schema_name, per_transaction, quote_ident, read_committed
from .startup import LoopLock, StartAttempts, start_once

logger = logging.getLogger("pqrun")

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    #: A connection from ``store.connection()`` / ``store.transaction()``, or your own.
    Connection = asyncpg.Connection[Any] | PoolConnectionProxy[Any]
else:
    Connection = asyncpg.Connection

# "relation "jobs" does not exist", also qualified: "relation "billing.jobs" ...".
MISSING_JOBS_TABLE = re.compile(r'"(\w+\.)?jobs"')


# Through a pooler: no statement cache, or a PgBouncer that keeps prepared statements.
LOST_STATEMENT_FIX = (
    "pass statement_cache_size=0 to PgJobStore, or set max_prepared_statements in "
    "PgBouncer 1.21 or later"
)


class StoreConnections:
    """The pool, the settings and the connection rules of one PgJobStore."""

    def __init__(
        self,
        dsn: str | None,
        *,
        min_size: int,
        max_size: int | None,
        connect_timeout: float,
        statement_timeout: float,
        schema: str | None,
        pool_kwargs: dict[str, Any],
        pool: asyncpg.Pool[Any] | None = None,
        pooler: bool | None = None,
        direct_dsn: str | None = None,
    ) -> None:
        #: The DSN goes through a transaction pooler (PgBouncer...): no setting at connect,
        #: no prepared statement kept, no session of its own (own_connections.py).
        self.pooler = env_bool("PQRUN_POOLER", pooler, False)
        #: A DSN that reaches PostgreSQL itself, for what needs a session (LISTEN, VACUUM).
        self.direct_dsn = direct_dsn or os.environ.get("PQRUN_DIRECT_DSN") or None
        #: A pool of the caller's (``PgJobStore(pool=...)``): used as it is, never closed.
        self.given_pool = pool
        if pool is not None and (max_size is not None or min_size != 1):
            raise ValueError(
                "PgJobStore(pool=...) uses your pool as it is: size it with "
                "asyncpg.create_pool(min_size=..., max_size=...), not the store's"
            )
        dsn, pool_kwargs = where_to_connect(dsn, pool, pool_kwargs)
        self.dsn = dsn
        #: Every password this store may meet in an error: of the DSN (its own), of the
        #: caller's pool, of direct_dsn. None of them is ever shown (describe(), cause()).
        self.secrets = secrets_of(pool, pool_kwargs, self.direct_dsn)
        #: (database, jobs table) the store's pool reaches; its own connections must
        #: reach the same (checked when they open from another DSN: pool=, direct_dsn).
        self.identity: tuple[str | None, str, int] | None = None
        #: What was said once already (warnings that would repeat at each reconnect).
        self.said: set[str] = set()
        self.min_size = min_size
        self.max_size = max_size
        self.connections_wanted = 0
        self.opening = LoopLock()
        self.starting = StartAttempts()
        #: False where the pool's transactions are REPEATABLE READ or SERIALIZABLE by
        #: default (a server's, database's or role's setting, or server_settings): pqrun's
        #: statements then ask for READ COMMITTED, which their guards are written for
        #: (session_settings.read_committed).
        self.read_committed = True
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        #: What a first use starts the store with: PgJobStore.start, so that a subclass's
        #: or a test's start() is the one that runs, as for a direct call.
        self.lazy_start: Callable[[], Awaitable[None]] = self.start
        # pqrun's batch statements take arrays whose length changes from call to call; a
        # generic plan (what PostgreSQL switches to after five runs of a prepared
        # statement) picks scans sized for no array in particular and made batch
        # completion ten times slower in docs/benchmarks.md. Plan each run for its
        # arrays. A server_settings of yours overrides this.
        #: What pqrun's own connections are opened with, before the caller's settings.
        self.own_settings = {"plan_cache_mode": "force_custom_plan"}
        if self.pooler:
            # asyncpg's named prepared statements outlive the transaction they were made in,
            # and the pooler hands the next one to another server connection.
            pool_kwargs.setdefault("statement_cache_size", 0)
        #: The schema this store keeps its queue in (None: the search_path decides).
        schema = schema if schema is not None else os.environ.get("PQRUN_SCHEMA") or None
        self.schema = None if schema is None else check_schema_name(schema)
        settings = {
            **({} if self.pooler else self.own_settings),
            **(pool_kwargs.get("server_settings") or {}),
        }
        self.search_path = _search_path_for(
            self.schema, settings, sets_it=pool is None and not self.pooler
        )
        pool_kwargs["server_settings"] = settings
        #: pqrun's named statements -> the same in the store's schema (empty: no schema).
        self.statements = (
            {} if self.schema is None else qualified_statements(quote_ident(self.schema))
        )
        self.pool_kwargs = pool_kwargs
        self.pool: asyncpg.Pool[Any] | None = None
        self.pool_loop: asyncio.AbstractEventLoop | None = None
        self.schema_checked = False  # and self.channel learned
        #: Run first by close() (the store's waiters end with the pool).
        self.before_close: Callable[[], Awaitable[None]] | None = None
        #: The LISTEN/NOTIFY channel of this store's jobs table; known once started.
        self.channel = f"pqrun:{self.schema or 'public'}"
        # The connection of the transaction() or connection() block the code is in, so
        # that store calls inside it join it instead of taking a second connection.
        # Tasks started inside the block inherit it, but only while the block is open.
        self.current: contextvars.ContextVar[_Block | None] = contextvars.ContextVar(
            f"pqrun_store_{id(self)}_connection", default=None
        )

    def database(self) -> str:
        """The database this store uses, for messages (without passwords)."""
        if self.dsn:
            return redact_dsn(self.dsn)
        return "the database of the pool given to PgJobStore(pool=...)"

    def where(self) -> str:
        """Where this store's jobs table is, for messages."""
        if self.schema is not None:
            return f"schema {self.schema!r} of {self.database()}"
        return f"the search_path of {self.database()}"

    def setup_hint(self) -> str:
        """How to create the schema, for messages."""
        option = f" --schema {self.schema}" if self.schema is not None else ""
        return f"apply the schema first: `pqrun setup{option}`, or `await store.setup()`" + (
            "" if self.schema is not None else ', or psql "$DATABASE_URL" -f ddl.sql'
        )

    @property
    def started(self) -> bool:
        """True while the connection pool is open (in the running event loop)."""
        return self.pool is not None and self.pool_loop is running_loop()

    def want_connections(self, count: int) -> None:
        """Ask for a pool of at least ``count`` + 2 connections (Workers call this).

        Has no effect once the pool is open or when ``max_size`` was given explicitly.
        """
        self.connections_wanted += count

    async def start(self) -> None:
        """Open the pool and check that the schema is there. Calling it again does nothing.
        One start at a time; those waiting for a start that fails fail with it
        (startup.py)."""
        if not (self.started and self.schema_checked):
            await start_once(self)

    async def open_pool(self) -> asyncpg.Pool[Any]:
        """The pool of the running event loop, opened if need be (no schema check), by one
        task at a time: many first uses at once open one pool, not one each."""
        loop = asyncio.get_running_loop()
        async with self.opening.lock():
            if self.pool is not None and self.pool_loop is loop:
                return self.pool
            if self.given_pool is not None:
                await open_given_pool(
                    self.given_pool, loop, self.cannot_connect, self.cause, self.connections_wanted
                )
                self.pool, self.pool_loop = self.given_pool, loop
                self.schema_checked = False
                return self.given_pool
            if self.pool is not None:
                # Opened under another event loop (an earlier asyncio.run()): unusable here.
                with contextlib.suppress(RuntimeError):  # that loop may be closed already
                    self.pool.terminate()
                self.pool = None
            max_size = self.max_size or max(10, self.connections_wanted + 2)
            quiet_pool_floor_warnings()
            # Built first, then awaited: a ValueError from the pool's own arguments is the
            # caller's to see as is; one while connecting is about the DSN.
            opening = asyncpg.create_pool(
                self.dsn,
                min_size=min(self.min_size, max_size),
                max_size=max_size,
                timeout=self.connect_timeout,
                **self.pool_kwargs,
            )
            try:
                pool = await opening
            except CONNECT_ERRORS as exc:
                raise self.cannot_connect(exc) from self.cause(exc)
            self.pool, self.pool_loop = pool, loop
            self.schema_checked = False
            return pool

    async def close(self, within: float = 10.0) -> None:
        """Close the pool, waiting up to ``within`` s for connections in use to come back.

        Past that they are closed anyway. The store opens a new pool if used again.
        """
        if self.before_close is not None:
            await self.before_close()
        pool, self.pool = self.pool, None
        if pool is None or pool is self.given_pool:
            return  # a caller's pool is the caller's to close
        if self.pool_loop is not running_loop():
            with contextlib.suppress(RuntimeError):
                pool.terminate()
            return
        try:
            await asyncio.wait_for(asyncio.shield(pool.close()), timeout=within)
        except TimeoutError:
            logger.warning("closing the pool took over %.0fs; closing connections at once", within)
            pool.terminate()

    def joined(self) -> Connection | None:
        """The connection of the open block the code runs in, if any."""
        block = self.current.get()
        return block.conn if block is not None and block.open else None

    def cannot_connect(self, exc: BaseException) -> DatabaseUnavailable:
        """Raise it ``from self.cause(exc)``."""
        return refused(exc, self.database(), self.describe(exc), dsn=self.dsn, pooler=self.pooler)

    def unavailable(self, exc: BaseException) -> DatabaseUnavailable:
        """Raise it ``from self.cause(exc)``."""
        return DatabaseUnavailable(
            f"lost the connection to PostgreSQL at {self.database()}: {self.describe(exc)}"
        )

    def describe(self, exc: BaseException) -> str:
        """``Type: text`` of ``exc`` without this store's passwords (``error_text``)."""
        return error_text(exc, self.dsn, *self.secrets)

    def cause(self, exc: BaseException) -> BaseException | None:
        """What an error made from ``exc`` is raised from (None: it would show a password)."""
        return cause_without_secrets(exc, self.dsn, *self.secrets)

    @asynccontextmanager
    async def pooled(self) -> AsyncIterator[Connection]:
        """A pooled connection; only getting it is translated into pqrun's errors."""
        if not (self.started and self.schema_checked):
            # (Not the pool alone: it opens before the schema check, whose failure closes
            # it under whoever took a connection from it meanwhile.)
            await self.lazy_start()
        # The pool this connection came from: close() may drop the store's meanwhile.
        pool = self.pool
        assert pool is not None
        try:
            conn = await pool.acquire(timeout=self.statement_timeout)
        except (*CONNECTION_ERRORS, *DSN_ERRORS) as exc:  # DSN: the first connection of a
            raise self.unavailable(exc) from self.cause(exc)  # pool opened with min_size=0
        try:
            yield conn
        except BaseException:
            # Releasing a connection whose query was cancelled can itself time out; that
            # must not replace the error (or the cancellation) already on its way.
            with contextlib.suppress(Exception):
                await pool.release(conn, timeout=self.statement_timeout)
            raise
        if pool.is_closing():
            return  # closed while in use (store.close()): its connections went with it
        await pool.release(conn, timeout=self.statement_timeout)

    @asynccontextmanager
    async def acquire(
        self, conn: Connection | None = None, *, join: bool = True
    ) -> AsyncIterator[Connection]:
        """A connection for pqrun's own statements, whose errors it translates.

        ``conn`` is a connection of the caller's. Without it, the connection of an
        enclosing ``connection()``/``transaction()`` block, unless ``join`` is false; else
        one from the pool. With a ``schema``, what it yields runs pqrun's named
        statements in their schema-qualified form (``Qualified``), whatever the
        connection's search_path; nothing about the connection itself changes.
        """
        if isinstance(conn, Qualified):
            conn = conn.conn
        given = conn
        conn = conn or (self.joined() if join else None)
        try:
            # (type(), not isinstance(): asyncpg's Connection class says every connection
            # is an instance of each of its subclasses.)
            if type(given) is OwnConnection and given.per_transaction_settings:
                # Through a transaction pooler: its settings hold for this statement only.
                settings = given.per_transaction_settings
                async with per_transaction(given, settings, self.statement_timeout):
                    yield self.qualify(given)
            elif conn is not None:
                yield self.qualify(conn)
            else:
                async with self.pooled() as pooled:
                    yield self.qualify(pooled)
        except asyncpg.UndefinedTableError as exc:
            if not MISSING_JOBS_TABLE.search(str(exc)):
                raise
            raise SchemaMissing(
                f"the table 'jobs' is gone from {self.where()}: {self.setup_hint()}"
            ) from exc
        except ClientDataError:
            raise  # a value the driver cannot send: about the data, not the connection
        except asyncpg.InvalidSQLStatementNameError as exc:
            if "__asyncpg_" not in str(exc):
                raise
            fix = (
                "give your pool statement_cache_size=0 (asyncpg.create_pool)"
                if self.given_pool is not None
                else LOST_STATEMENT_FIX
                if self.pooler
                else "pass pooler=True to PgJobStore"
            )
            raise DatabaseUnavailable(
                f"a prepared statement pqrun made is gone from its connection to "
                f"{self.database()}: the DSN goes through a transaction pooler (PgBouncer, "
                "RDS Proxy, ...), which hands each transaction to another server "
                f"connection, where it was never prepared. Fix: {fix} (docs/deployment.md)"
            ) from exc
        except CONNECTION_ERRORS as exc:
            raise self.unavailable(exc) from self.cause(exc)

    def sql(self, statement: str) -> str:
        """A named statement as this store runs it (schema-qualified with a ``schema``)."""
        return self.statements.get(statement, statement)

    def qualify(self, conn: Connection) -> Connection:
        """``conn`` as pqrun's own statements use it (see ``Qualified``)."""
        if not self.statements:
            return conn
        return cast("Connection", Qualified(conn, self.statements))

    @asynccontextmanager
    async def joinable(self, conn: Connection) -> AsyncIterator[Connection]:
        block = _Block(conn)
        token = self.current.set(block)
        try:
            yield conn
        finally:
            block.open = False  # a task that outlives the block must not use its connection
            self.current.reset(token)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A pooled connection for your own queries.

        Store calls made inside the block by the same task use this connection too, so
        the block never needs a second one. Inside ``transaction()``: its connection.
        Errors raised by your own code in the block reach you unchanged.
        """
        joined = self.joined()
        if joined is not None:
            yield joined
            return
        async with self.pooled() as conn, self.joinable(conn):
            yield conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """A connection inside a transaction: committed on success, rolled back on error.

        Store calls made inside the block by the same task (``enqueue``, ``cancel``, ...)
        join this transaction, so a job enqueued here exists if and only if it commits,
        and a handler never needs a second pooled connection. Nested blocks become
        savepoints. One connection runs one statement at a time: inside the block, await
        store calls one after another rather than gathering them. Tasks you start inside
        the block join it while it is open, and use their own connections after.
        """
        joined = self.joined()
        if joined is not None:
            async with joined.transaction():
                yield joined
            return
        async with self.pooled() as conn, conn.transaction(), self.joinable(conn):
            yield conn

    # -- one statement on a connection of acquire()'s, bounded by the statement timeout,
    # -- READ COMMITTED whatever the default isolation (session_settings.read_committed).

    async def fetch(self, sql: str, *args: Any, conn: Connection | None = None) -> list[Any]:
        """The rows of ``sql``."""
        async with self.acquire(conn) as c:
            timeout = self.statement_timeout
            return await read_committed(self, c, lambda: c.fetch(sql, *args, timeout=timeout))

    async def fetchrow(self, sql: str, *args: Any, conn: Connection | None = None) -> Any:
        """The first row of ``sql``, or None."""
        async with self.acquire(conn) as c:
            timeout = self.statement_timeout
            return await read_committed(self, c, lambda: c.fetchrow(sql, *args, timeout=timeout))

    async def fetchval(self, sql: str, *args: Any, conn: Connection | None = None) -> Any:
        """The first column of the first row of ``sql``, or None."""
        async with self.acquire(conn) as c:
            timeout = self.statement_timeout
            return await read_committed(self, c, lambda: c.fetchval(sql, *args, timeout=timeout))

    async def execute(self, sql: str, *args: Any, conn: Connection | None = None) -> str:
        """The status of ``sql`` ("UPDATE 1", ...)."""
        async with self.acquire(conn) as c:
            timeout = self.statement_timeout
            return await read_committed(self, c, lambda: c.execute(sql, *args, timeout=timeout))


def running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _search_path_for(schema: str | None, settings: dict[str, str], *, sets_it: bool) -> str | None:
    """The search_path of a store's ``schema``, added to its connection ``settings``.

    pqrun's statements name their schema themselves (``Qualified``); the search_path is
    for your own statements inside ``store.transaction()`` on the store's own pool, and
    for ddl.sql. A caller's pool keeps its own; a pooler drops it anyway.
    """
    if schema is None:
        return None
    if not sets_it:
        return quote_ident(schema)
    if "search_path" in settings:
        raise ValueError("pass either schema= or server_settings={'search_path': ...}, not both")
    settings["search_path"] = quote_ident(schema)
    return settings["search_path"]


class OwnConnection(asyncpg.Connection):
    """A connection pqrun opened for itself, outside any pool (own_connections.py).

    Through a transaction pooler its settings cannot be sent at connect: they are set
    for each statement's transaction instead (``per_transaction_settings``).
    """

    per_transaction_settings: Mapping[str, str] = {}


@dataclass(slots=True, eq=False)
class _Block:
    """An open connection() or transaction() block."""

    conn: Connection
    open: bool = True
