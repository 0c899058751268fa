"""PgJobStore: the jobs table, for the app, the workers, operators and the dashboard.

Each statement that moves a job names the state it expects the job to be in and, for a
job that is RUNNING, the claim that owns it (``locked_by``, ``attempts`` and
``lease_id``, the id of the claiming transaction). A move whose expectation no longer
holds changes nothing; the caller learns it from the return value.
docs/state-machine.md lists the moves and their guards.

This module is the public face. The statements are named queries in
``pqrun/_store/sql``; the methods live in ``pqrun._store``, one module per audience,
and PgJobStore puts them together over one ``StoreConnections`` (the pool, the
schema's search_path and the errors it translates).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

import asyncpg

from ._json_encoding import JSONEncoderOption, JSONEncoding
from ._store.browsing import BrowsingMethods
from ._store.connections import Connection, StoreConnections
from ._store.inspection import InspectionMethods
from ._store.interventions import InterventionMethods
from ._store.maintenance import MaintenanceMethods, Pruned, VacuumStats
from ._store.moves import PER_KEY_WINDOW, WorkerMoves
from ._store.own_connections import can_have_sessions, dedicated_connection, listen
from ._store.pauses import PauseMethods
from ._store.reaping import ReapingMethods
from ._store.registry import RegistryMethods
from ._store.schedules import ScheduleMethods
from ._store.secrets import redact_dsn
from ._store.type_minutes import TypeMinuteMethods
from ._store.waiting import FinishWaiters, WaitMethods
from ._store.workflows import WorkflowMethods
from .observers import JobObserver


class PgJobStore(
    ScheduleMethods,  # and, through it, EnqueueMethods: enqueue, enqueue_many
    WaitMethods,
    InterventionMethods,
    WorkerMoves,
    RegistryMethods,
    ReapingMethods,
    MaintenanceMethods,
    InspectionMethods,
    BrowsingMethods,
    TypeMinuteMethods,
    WorkflowMethods,
    PauseMethods,
):
    """The jobs table, reached through an asyncpg connection pool.

    ``PgJobStore(dsn)`` does not connect yet: the pool opens on ``start()`` or on first
    use, and ``close()`` (or leaving ``async with store:``) closes it. Without a ``dsn``
    the store reads ``PQRUN_DSN``, then ``DATABASE_URL``.

    ``min_size``/``max_size`` size the pool; ``max_size`` defaults to at least 10 and to
    enough for the concurrency of the workers built on this store. ``statement_timeout``
    bounds each of pqrun's own statements and the wait for a pooled connection, so a
    connection that silently died cannot hang a worker. Further keyword arguments go to
    ``asyncpg.create_pool`` (``server_settings``, ``ssl``, ``statement_cache_size=0``
    behind a transaction-mode pooler, ...).

    ``PgJobStore(pool=pool)`` runs pqrun's statements on an asyncpg pool of yours,
    as it is: pqrun changes none of its settings and never closes it (close it after the
    store). ``min_size``, ``max_size`` and pool keywords then do not apply. A worker
    still opens a few connections of its own (liveness, outcome writes, LISTEN), as the
    pool does, or to ``dsn`` when one is given too (docs/deployment.md).

    ``pooler=True`` (or ``PQRUN_POOLER=true``): the DSN goes through a transaction
    pooler (PgBouncer, RDS Proxy, Supavisor, pgcat). pqrun then sends no setting at
    connect and keeps no prepared statement (``statement_cache_size=0`` unless you give
    one); a worker's heartbeats, LISTEN and VACUUM go to ``direct_dsn`` (or
    ``PQRUN_DIRECT_DSN``), a DSN that reaches PostgreSQL itself.
    Without one, workers poll for new jobs, ``wait()`` polls, vacuuming is left to
    autovacuum, and liveness shares the pooler with handlers (docs/deployment.md).

    ``schema="billing"`` keeps the whole queue (tables, trigger, notification channel)
    in that PostgreSQL schema: pqrun's statements name it, and the store's own pool's
    connections get ``search_path`` set to it alone, so two stores with different
    schemas share a database without seeing each other's jobs. Inside
    ``store.transaction()`` qualify your own tables (``public.orders``). Without it,
    the queue is wherever the connection's ``search_path`` finds the ``jobs`` table
    (``public`` by default).

    ``json_encoder`` encodes what JSON cannot carry as it is, in payloads enqueued here,
    schedules' payloads and the results of handlers run by workers on this store: a
    ``json.JSONEncoder`` subclass (Django's ``DjangoJSONEncoder``) or a ``default=``
    function. Without one, such a value raises TypeError naming its field. Either way a
    handler reads plain JSON back (a datetime as its string); a payload model gives it
    types again.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        min_size: int = 1,
        max_size: int | None = None,
        connect_timeout: float = 10.0,
        statement_timeout: float = 30.0,
        schema: str | None = None,
        pool: asyncpg.Pool[Any] | None = None,
        pooler: bool | None = None,
        direct_dsn: str | None = None,
        json_encoder: JSONEncoderOption = None,
        **pool_kwargs: Any,
    ) -> None:
        # First: a json_encoder of the wrong kind is refused before anything else is made.
        self._encoding = JSONEncoding(json_encoder)
        self._db = StoreConnections(
            dsn,
            pool=pool,
            pooler=pooler,
            direct_dsn=direct_dsn,
            min_size=min_size,
            max_size=max_size,
            connect_timeout=connect_timeout,
            statement_timeout=statement_timeout,
            schema=schema,
            pool_kwargs=pool_kwargs,
        )
        self._payload_models: dict[str, type[Any]] = {}
        # Looked up at each use, as any other call of the store's own methods.
        self._waiters = FinishWaiters(
            lambda on_payload: self.listen(on_payload), lambda: can_have_sessions(self._db)
        )
        self._db.before_close = self._waiters.close
        self._db.lazy_start = lambda: self.start()
        #: Who hears about enqueues here and runs by workers on this store (metrics).
        self.observers: tuple[JobObserver, ...] = ()

    def __repr__(self) -> str:
        where = repr(redact_dsn(self.dsn)) if self.dsn else "pool=..."
        if self.schema is not None:
            return f"PgJobStore({where}, schema={self.schema!r})"
        return f"PgJobStore({where})"

    # -- settings, kept by the connections -----------------------------------------------

    @property
    def dsn(self) -> str:
        """The DSN this store connects with (shown only through ``redact_dsn``)."""
        return self._db.dsn

    @dsn.setter
    def dsn(self, dsn: str) -> None:
        self._db.dsn = dsn

    @property
    def schema(self) -> str | None:
        """The schema this store keeps its queue in (None: the search_path decides)."""
        return self._db.schema

    @property
    def json_encoder(self) -> JSONEncoderOption:
        """The ``json_encoder`` given to this store (None: plain JSON only)."""
        return self._encoding.option

    @property
    def statement_timeout(self) -> float:
        """Seconds each of pqrun's own statements (and the wait for a connection) may take."""
        return self._db.statement_timeout

    @statement_timeout.setter
    def statement_timeout(self, seconds: float) -> None:
        self._db.statement_timeout = seconds

    @property
    def channel(self) -> str:
        """The LISTEN/NOTIFY channel of this store's jobs table; known once started."""
        return self._db.channel

    @channel.setter
    def channel(self, channel: str) -> None:
        self._db.channel = channel

    @property
    def _connections_wanted(self) -> int:
        return self._db.connections_wanted

    @property
    def _pool(self) -> asyncpg.Pool[Any] | None:
        """The open pool, if any (tests end a cut-off store's pool at once with it)."""
        return self._db.pool

    def observe(self, observer: JobObserver) -> None:
        """Tell ``observer`` about enqueues through this store and runs by its workers.

        ``pqrun.metrics`` attaches its Prometheus metrics this way. Adding the same
        observer twice does nothing.
        """
        if not isinstance(observer, JobObserver):
            raise TypeError(f"observe() needs a pqrun.observers.JobObserver, got {observer!r}")
        if observer not in self.observers:
            self.observers = (*self.observers, observer)

    # -- lifecycle -------------------------------------------------------------------

    @property
    def started(self) -> bool:
        """True while the connection pool is open (in the running event loop)."""
        return self._db.started

    def want_connections(self, count: int) -> None:
        """Ask for a pool of at least ``count`` + 2 connections (Workers call this).

        Has no effect once the pool is open or when ``max_size`` was given explicitly.
        """
        self._db.want_connections(count)

    async def start(self) -> None:
        """Open the pool and check that the schema is there. Calling it again does nothing."""
        await self._db.start()

    async def close(self, within: float = 10.0) -> None:
        """Close the pool, waiting up to ``within`` s for connections in use to come back.

        Past that they are closed anyway. The store opens a new pool if used again.
        """
        await self._db.close(within)

    async def __aenter__(self) -> PgJobStore:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def listen(self, on_payload: Callable[[str], None]) -> Connection:
        """A dedicated connection LISTENing on this store's channel (for workers).

        ``on_payload`` gets each notification's payload: empty when jobs are due now,
        else the epoch of the earliest ``run_after`` of a batch of future jobs.
        """
        return await listen(self._db, on_payload, self.dedicated_connection)

    async def dedicated_connection(
        self,
        purpose: str,
        server_settings: Mapping[str, str] | None = None,
        *,
        session: bool = False,
    ) -> Connection:
        """A connection of its own, outside the pool, with the store's settings (schema).

        Workers keep their liveness, their outcome writes and their LISTEN on such
        connections, so that handlers holding every pooled connection cannot starve them.
        The caller closes it. ``server_settings`` are added to the store's own.
        ``session``: behind a transaction pooler, past it (``direct_dsn``), for what
        must not wait for the pooler's server connections (a worker's heartbeats).
        """
        return await dedicated_connection(self._db, purpose, server_settings, session=session)

    # -- your own statements ---------------------------------------------------------

    def connection(self) -> AbstractAsyncContextManager[Connection]:
        """A pooled connection for your own queries.

        Store calls made inside the block by the same task use this connection too, so
        the block never needs a second one. Inside ``transaction()``: its connection.
        Errors raised by your own code in the block reach you unchanged.
        """
        return self._db.connection()

    def transaction(self) -> AbstractAsyncContextManager[Connection]:
        """A connection inside a transaction: committed on success, rolled back on error.

        Store calls made inside the block by the same task (``enqueue``, ``cancel``, ...)
        join this transaction, so a job enqueued here exists if and only if it commits,
        and a handler never needs a second pooled connection. Nested blocks become
        savepoints. One connection runs one statement at a time: inside the block, await
        store calls one after another rather than gathering them. Tasks you start inside
        the block join it while it is open, and use their own connections after.
        """
        return self._db.transaction()


__all__ = [
    # The public face (docs/security.md and docs/flow-control.md name the last two).
    "Connection",
    "PgJobStore",
    "Pruned",
    "VacuumStats",
    "PER_KEY_WINDOW",
    "redact_dsn",
]
