"""Operators' upkeep: applying the schema, checking it, and pruning finished jobs."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pqrun.errors import NotPermitted, SchemaMissing
from pqrun.limits import check_int
from pqrun.models import JobStatus
from pqrun.schema import ddl_sql

from .connections import Connection
from .own_connections import can_have_sessions, dedicated_connection, session_connection
from .queries import query
from .schema_objects import SCHEMA_OBJECTS, missing_objects
from .session_settings import SET_LOCAL, own_transaction, per_transaction, quote_ident

if TYPE_CHECKING:
    from .connections import StoreConnections

CREATE_SCHEMA_STATEMENT = query("create_schema")
# Drops a schema with everything in it: for pqrun.testing's temporary queues only.
DROP_SCHEMA_STATEMENT = query("drop_schema")
PRUNE_LOCK = query("prune_lock")
PRUNE_FINISHED = query("prune_finished")
VACUUM_STATE = query("vacuum_state")
VACUUM_JOBS = query("vacuum_jobs")
LOCK_WAITERS = query("lock_waiters")
ANALYZE_JOBS = query("analyze_jobs")
JOBS_STATISTICS = query("jobs_statistics")
# The longest an ANALYZE of the jobs table may run (seconds): a sample of 30,000 rows.
ANALYZE_SECONDS = 60
# Seconds between looks, while a vacuum runs, for someone waiting for the table's lock.
LOCK_WATCH_INTERVAL = 0.2
# What VACUUM says, as a WARNING, when it did not vacuum: the table was locked
# (SKIP_LOCKED), or this role may not.
VACUUM_SKIPPED = frozenset({"55P03", "42501"})


@dataclass(frozen=True, slots=True)
class VacuumStats:
    """What ``store.vacuum_stats()`` read from the jobs table's statistics."""

    #: Dead row versions in the table (autovacuum resets this even when it skips the
    #: indexes, where the claims' dead pickup entries are).
    dead_rows: int
    #: Rows updated or deleted so far: it only grows (until the statistics are reset).
    changes: int
    #: Vacuums run by hand (``store.vacuum``, workers, operators) so far.
    vacuums: int
    #: Since the last of those ended (None: none yet).
    seconds_since_vacuum: float | None
    #: Whether a vacuum of the table (anyone's, autovacuum's too) runs now.
    vacuuming: bool


@dataclass(frozen=True, slots=True)
class Pruned:
    """What one ``store.prune()`` deleted."""

    done: int = 0
    failed: int = 0
    cancelled: int = 0
    #: Another process held the prune lock, so this call stopped early.
    busy: bool = False
    #: The last batch was full: more may be due for deletion (max_batches ran out).
    more: bool = False

    @property
    def total(self) -> int:
        return self.done + self.failed + self.cancelled


class MaintenanceMethods:
    """PgJobStore's setup, schema check and pruning (operators', and workers' pruner)."""

    _db: StoreConnections

    async def setup(self) -> None:
        """Apply ddl.sql (safe to repeat) and open the pool.

        With ``schema=``, the schema is created first if missing and everything goes in
        it; otherwise into the first schema of the connection's search_path.
        """
        pool = await self._db.open_pool()
        async with pool.acquire(timeout=self._db.statement_timeout) as conn:
            if self._db.schema is None:
                await conn.execute(ddl_sql())
            else:
                create = await conn.fetchval(CREATE_SCHEMA_STATEMENT, self._db.schema)
                await conn.execute(create)
                # In the schema whatever the connection's own search_path (a caller's
                # pool, a transaction pooler): set for this transaction only.
                async with per_transaction(
                    conn, {"search_path": quote_ident(self._db.schema)}, self._db.statement_timeout
                ):
                    await conn.execute(ddl_sql())
        await self._db.lazy_start()

    async def check_schema(self) -> list[str]:
        """What ddl.sql would add to the schema in use (empty: it is current).

        Raises SchemaMissing when there is no jobs table at all.
        """
        row = await self._db.fetchrow(SCHEMA_OBJECTS)
        if row is None:
            raise SchemaMissing(
                f"the table 'jobs' is not in {self._db.where()}; {self._db.setup_hint()}"
            )
        return missing_objects(row)

    async def vacuum_stats(self) -> VacuumStats:
        """What the statistics say of the jobs table's dead rows and vacuums."""
        state = await self._vacuum_state()
        return VacuumStats(
            dead_rows=int(state["dead_rows"]),
            changes=int(state["changes"]),
            vacuums=int(state["vacuums"]),
            seconds_since_vacuum=state["seconds_since_vacuum"],
            vacuuming=bool(state["vacuuming"]),
        )

    async def analyze(self, *, if_missing: bool = False) -> bool | None:
        """Gather the planner's statistics on the jobs table (``ANALYZE``, skipped while a
        vacuum or another ANALYZE holds it). Returns whether the table has statistics
        now, or None while it holds no rows (nothing to gather them from, nothing to plan
        a claim among).

        ``if_missing``: only if it has none and holds rows, as workers and ``drain()`` do:
        without them the planner takes READY jobs for rare, and each claim among a
        backlog of them sorts them all. Raises NotPermitted when this role may not (the
        same roles as for ``vacuum()``).
        """
        if if_missing:
            known = await self._statistics()
            if known["has_statistics"] or not known["has_rows"]:
                return _has_statistics(known)
        self._refuse_unless_permitted(await self._vacuum_state(), "analyze", "run ANALYZE")
        # Not in the caller's transaction (its statistics would go with a rollback), with
        # a timeout of its own on both sides rather than the store's or the role's: a
        # sample read from a big, cold table may take a while, and one cut short every
        # time would never land; but DDL on jobs waits for it, so not for ever.
        async with self._db.acquire(join=False) as conn, own_transaction(conn):
            await conn.fetchval(SET_LOCAL, ["statement_timeout"], [f"{ANALYZE_SECONDS * 1000:.0f}"])
            await conn.execute(self._db.sql(ANALYZE_JOBS), timeout=ANALYZE_SECONDS + 5)
        return _has_statistics(await self._statistics())

    def _refuse_unless_permitted(self, state: Any, verb: str, fix: str) -> None:
        """NotPermitted, naming the roles that may, unless vacuum_state says this one may
        ``verb`` the jobs table (the same roles for VACUUM and ANALYZE)."""
        if not state["may_vacuum"]:
            raise NotPermitted(
                f"this role may not {verb} the jobs table in {self._db.where()}: only its "
                "owner or the database's owner may (or, on PostgreSQL 17+, a role with "
                f"MAINTAIN on it). Leave it to autovacuum (docs/operations.md), or {fix} "
                "as the owner; WORKER_VACUUM_ENABLED=false stops workers trying"
            )

    async def _statistics(self) -> Any:
        async with self._db.acquire(join=False) as conn:
            return await conn.fetchrow(JOBS_STATISTICS, timeout=self._db.statement_timeout)

    async def vacuum(self, *, min_seconds_between: float = 0.0) -> bool:
        """Vacuum the jobs table and its indexes, unless the last vacuum run by hand
        ended less than ``min_seconds_between`` ago or another vacuum runs now.

        Returns whether a vacuum ran to its end. It gives way (is cancelled, returning
        False) as soon as someone waits for a lock on the table: DDL, TRUNCATE. Raises
        NotPermitted when this role may not vacuum it: vacuum as its owner, or leave it
        to autovacuum (docs/operations.md).
        """
        if not min_seconds_between >= 0:
            raise ValueError(f"min_seconds_between must be >= 0, got {min_seconds_between!r}")
        if not can_have_sessions(self._db):
            raise NotPermitted(
                "VACUUM cannot run through a transaction pooler (it needs a session of "
                "its own, without a statement timeout): pass direct_dsn= to PgJobStore "
                "(or set PQRUN_DIRECT_DSN), or leave vacuuming to autovacuum "
                "(docs/operations.md); WORKER_VACUUM_ENABLED=false stops workers trying"
            )
        state = await self._vacuum_state()
        self._refuse_unless_permitted(state, "vacuum", "vacuum")
        since = state["seconds_since_vacuum"]
        if state["vacuuming"] or (since is not None and since < min_seconds_between):
            return False
        # Connections of its own: the pool's are for claims and handlers, and a vacuum
        # holds one for as long as it runs, without a statement timeout.
        vacuum_conn = await session_connection(
            self._db, "the vacuum's connection", {"statement_timeout": "0"}
        )
        try:
            warnings: list[str] = []
            vacuum_conn.add_log_listener(lambda _, message: warnings.append(message.sqlstate))
            watch_conn = await dedicated_connection(self._db, "the vacuum's lock watch")
            try:
                vacuuming = asyncio.ensure_future(vacuum_conn.execute(self._db.sql(VACUUM_JOBS)))
                try:
                    if not await self._vacuum_or_give_way(vacuuming, watch_conn):
                        return False
                finally:
                    if not vacuuming.done():  # gave way, cancelled, or the watch failed
                        vacuuming.cancel()
                        with contextlib.suppress(BaseException):
                            await vacuuming
            finally:
                await _close(watch_conn)
        finally:
            await _close(vacuum_conn)
        return not VACUUM_SKIPPED.intersection(warnings)

    async def _vacuum_state(self) -> Any:
        # Never in the caller's transaction, whose statistics would be read once and kept.
        async with self._db.acquire(join=False) as conn:
            state = await conn.fetchrow(VACUUM_STATE, timeout=self._db.statement_timeout)
        if state is None:
            raise SchemaMissing(f"the table 'jobs' is not in {self._db.where()}")
        return state

    async def _vacuum_or_give_way(
        self, vacuuming: asyncio.Future[str], watch_conn: Connection
    ) -> bool:
        """Wait for the vacuum; False as soon as someone waits for the table."""
        while True:
            done, _ = await asyncio.wait({vacuuming}, timeout=LOCK_WATCH_INTERVAL)
            if done:
                vacuuming.result()  # its error, if any
                return True
            # An error here stops the vacuum too (see vacuum()): unwatched, it could hold
            # up DDL for as long as it runs.
            if await watch_conn.fetchval(
                self._db.sql(LOCK_WAITERS), timeout=self._db.statement_timeout
            ):
                return False  # vacuum() cancels it

    async def prune(
        self,
        keep_done: timedelta | None = timedelta(days=1),
        keep_failed: timedelta | None = timedelta(days=7),
        *,
        batch_size: int = 1000,
        max_batches: int | None = None,
    ) -> Pruned:
        """Delete finished jobs older than their retention, in small batches.

        DONE jobs go ``keep_done`` after they finished, FAILED and CANCELLED ones
        ``keep_failed`` after (None keeps them for ever). Each batch of at most
        ``batch_size`` rows is its own short transaction, so no lock is held long; at
        most ``max_batches`` batches run (None: until nothing is due). One pruner runs at
        a time per queue: while another holds the prune lock this stops and says
        ``busy``. Needs DELETE on the jobs table.
        """
        check_int("batch_size", batch_size, 1)
        if max_batches is not None:
            check_int("max_batches", max_batches, 1)
        plan = [
            (status, keep)
            for status, keep in (
                (JobStatus.DONE, keep_done),
                (JobStatus.FAILED, keep_failed),
                (JobStatus.CANCELLED, keep_failed),
            )
            if keep is not None
        ]
        deleted = dict.fromkeys(JobStatus, 0)

        def pruned(**flags: bool) -> Pruned:
            return Pruned(
                deleted[JobStatus.DONE],
                deleted[JobStatus.FAILED],
                deleted[JobStatus.CANCELLED],
                **flags,
            )

        batches = 0
        for status, keep in plan:
            while True:
                if max_batches is not None and batches >= max_batches:
                    return pruned(more=True)
                batches += 1
                async with self._db.acquire() as conn, own_transaction(conn):
                    if not await conn.fetchval(
                        PRUNE_LOCK, self._db.channel, timeout=self._db.statement_timeout
                    ):
                        return pruned(busy=True)
                    outcome = await conn.execute(
                        PRUNE_FINISHED, status.value, keep, batch_size,
                        timeout=self._db.statement_timeout,
                    )  # fmt: skip
                count = int(outcome.split()[-1])  # "DELETE <n>"
                deleted[status] += count
                if count < batch_size:
                    break
        return pruned()


async def _close(conn: Connection) -> None:
    try:
        await conn.close(timeout=5)
    except Exception:
        conn.terminate()


def _has_statistics(known: Any) -> bool | None:
    """jobs_statistics' answer: None for a table without rows, else whether it has them."""
    return bool(known["has_statistics"]) if known["has_rows"] else None
