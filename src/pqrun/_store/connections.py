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

from .pool_floor import quiet_pool_floor_warnings
from .queries import Qualified, qualified_statements
from .schema_objects import JOBS_SCHEMA, SCHEMA_OBJECTS, missing_objects
from .secrets import URL_DSN, cause_without_secrets, error_text, redact_dsn
from .session_settings import check_schema_name, per_transaction, quote_ident

logger = logging.getLogger("pqrun")

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    #: A connection from ``store.connection()`` / ``store.transaction()``, or your own.
    Connection = asyncpg.Connection[Any] | PoolConnectionProxy[Any]
else:
    Connection = asyncpg.Connection

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

# "relation "jobs" does not exist", also qualified: "relation "billing.jobs" ...".
MISSING_JOBS_TABLE = re.compile(r'"(\w+\.)?jobs"')

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


# create_pool arguments that asyncpg.connect does not take.
POOL_ONLY = frozenset({"setup", "init", "reset", "max_queries", "max_inactive_connection_lifetime"})


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
        dsn, pool_kwargs = _where_to_connect(dsn, pool, pool_kwargs)
        self.dsn = dsn
        self.min_size = min_size
        self.max_size = max_size
        self.connections_wanted = 0
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
        """Open the pool and check that the schema is there. Calling it again does nothing."""
        if self.started and self.schema_checked:
            return
        pool = await self.open_pool()
        try:
            # With min_size=0 the pool opened without a connection: this is the first.
            async with pool.acquire(timeout=self.statement_timeout) as conn:
                schema = await conn.fetchval(self.sql(JOBS_SCHEMA), timeout=self.statement_timeout)
                objects = await conn.fetchrow(
                    self.sql(SCHEMA_OBJECTS), timeout=self.statement_timeout
                )
        except CONNECT_ERRORS as exc:
            await self.close()
            raise self.cannot_connect(exc) from self.cause(exc)
        except BaseException:
            await self.close()
            raise
        if schema is None or objects is None:
            await self.close()
            raise SchemaMissing(f"the table 'jobs' is not in {self.where()}; {self.setup_hint()}")
        missing = missing_objects(objects)
        # Without these, pqrun's statements fail; without an index or a trigger, they
        # are slower or wake workers later, and `pqrun check` says so.
        fatal = [thing for thing in missing if thing.startswith(("column", "table"))]
        if fatal:
            await self.close()
            raise SchemaMissing(
                f"the schema in {self.where()} is older than this version of pqrun: it "
                f"lacks {', '.join(fatal)}; apply ddl.sql again (safe to repeat): "
                f"{self.setup_hint().removeprefix('apply the schema first: ')}"
            )
        if missing:
            logger.warning(
                "the schema in %s lacks %s; apply ddl.sql again (pqrun setup)",
                self.where(),
                ", ".join(missing),
            )
        self.channel = schema
        self.schema_checked = True

    async def open_pool(self) -> asyncpg.Pool[Any]:
        """The pool of the running event loop, opened if need be (no schema check)."""
        loop = asyncio.get_running_loop()
        if self.pool is not None and self.pool_loop is loop:
            return self.pool
        if self.given_pool is not None:
            await open_given_pool(self.given_pool, loop, self.cannot_connect, self.cause)
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
        if self.pool is not None and self.pool_loop is loop:
            await pool.close()  # another task opened one while this one connected
            return self.pool
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
        where = f"cannot connect to PostgreSQL at {self.database()}"
        if isinstance(exc, asyncpg.InvalidCatalogNameError):
            return DatabaseUnavailable(
                f"{where}: {self.describe(exc)}. Create the database or fix the DSN"
            )
        if isinstance(exc, asyncpg.ProtocolViolationError) and "startup parameter" in str(exc):
            return DatabaseUnavailable(
                f"{where}: {self.describe(exc)}. A connection pooler in front of PostgreSQL "
                "refused the settings pqrun sends at connect: if the DSN goes through "
                "PgBouncer or another transaction pooler, pass pooler=True to PgJobStore "
                "(or set PQRUN_POOLER=true; docs/deployment.md)"
            )
        if self.dsn and URL_DSN.match(self.dsn) is None:
            # asyncpg reads URLs only; libpq's host=... form fails as "invalid DSN".
            where += " (write the DSN as a URL: postgresql://user:password@host:port/db)"
        return DatabaseUnavailable(
            f"{where}: {self.describe(exc)}. Check that the server is running and "
            "that the DSN (dsn=, PQRUN_DSN or DATABASE_URL) names the right host, port, "
            "user and database"
        )

    def unavailable(self, exc: BaseException) -> DatabaseUnavailable:
        """Raise it ``from self.cause(exc)``."""
        return DatabaseUnavailable(
            f"lost the connection to PostgreSQL at {self.database()}: {self.describe(exc)}"
        )

    def describe(self, exc: BaseException) -> str:
        """``Type: text`` of ``exc`` without this store's passwords (``error_text``)."""
        return error_text(exc, self.dsn, self.pool_kwargs.get("password"))

    def cause(self, exc: BaseException) -> BaseException | None:
        """What an error made from ``exc`` is raised from (None: it would show a password)."""
        return cause_without_secrets(exc, self.dsn, self.pool_kwargs.get("password"))

    @asynccontextmanager
    async def pooled(self) -> AsyncIterator[Connection]:
        """A pooled connection; only getting it is translated into pqrun's errors."""
        if not self.started:
            await self.lazy_start()
        assert self.pool is not None
        try:
            conn = await self.pool.acquire(timeout=self.statement_timeout)
        except (*CONNECTION_ERRORS, *DSN_ERRORS) as exc:  # DSN: the first connection of a
            raise self.unavailable(exc) from self.cause(exc)  # pool opened with min_size=0
        try:
            yield conn
        except BaseException:
            # Releasing a connection whose query was cancelled can itself time out; that
            # must not replace the error (or the cancellation) already on its way.
            with contextlib.suppress(Exception):
                await self.pool.release(conn, timeout=self.statement_timeout)
            raise
        await self.pool.release(conn, timeout=self.statement_timeout)

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
            raise DatabaseUnavailable(
                f"a prepared statement pqrun made is gone from its connection to "
                f"{self.database()}: the DSN goes through a transaction pooler (PgBouncer, "
                "RDS Proxy, ...), which hands each transaction to another server "
                "connection. Pass pooler=True to PgJobStore (docs/deployment.md)"
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

    # -- one statement on a connection of acquire()'s, bounded by the statement timeout.

    async def fetch(self, sql: str, *args: Any, conn: Connection | None = None) -> list[Any]:
        """The rows of ``sql``."""
        async with self.acquire(conn) as c:
            return await c.fetch(sql, *args, timeout=self.statement_timeout)

    async def fetchrow(self, sql: str, *args: Any, conn: Connection | None = None) -> Any:
        """The first row of ``sql``, or None."""
        async with self.acquire(conn) as c:
            return await c.fetchrow(sql, *args, timeout=self.statement_timeout)

    async def fetchval(self, sql: str, *args: Any, conn: Connection | None = None) -> Any:
        """The first column of the first row of ``sql``, or None."""
        async with self.acquire(conn) as c:
            return await c.fetchval(sql, *args, timeout=self.statement_timeout)

    async def execute(self, sql: str, *args: Any, conn: Connection | None = None) -> str:
        """The status of ``sql`` ("UPDATE 1", ...)."""
        async with self.acquire(conn) as c:
            return await c.execute(sql, *args, timeout=self.statement_timeout)


def running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def open_given_pool(
    pool: asyncpg.Pool[Any],
    loop: asyncio.AbstractEventLoop,
    cannot_connect: Callable[[BaseException], DatabaseUnavailable],
    cause: Callable[[BaseException], BaseException | None],
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


def _where_to_connect(
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
    # pqrun's own connections (a worker's liveness, outcome writes, LISTEN) open as the
    # pool's do, unless a dsn says where (a direct one, past a pooler).
    pool_dsn, pool_connect_kwargs = connect_arguments_of(pool)
    return pool_dsn or "", {k: v for k, v in pool_connect_kwargs.items() if k not in POOL_ONLY}


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
