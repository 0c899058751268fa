"""A store's start: its pool opened and the schema checked, one start at a time.

A start that fails closes the pool it opened. Run beside another first use, it closed
that one's connection in the middle of its own check, which then said "cannot connect"
instead of what is wrong: so starts take turns. Those that waited for a start that
failed fail with the same error, without trying again each in turn: with a server that
answers nothing, the last of many first uses would otherwise wait one statement timeout
for each one before it.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import TYPE_CHECKING

from pqrun.errors import SchemaMissing

from .driver_errors import CONNECT_ERRORS
from .schema_objects import IDENTITY, JOBS_SCHEMA, SCHEMA_OBJECTS, missing_objects

if TYPE_CHECKING:
    from .connections import StoreConnections

logger = logging.getLogger("pqrun")


class LoopLock:
    """An asyncio.Lock of the running event loop: a store may be used under one loop,
    then another (each asyncio.run() of a script), and a lock belongs to one."""

    def __init__(self) -> None:
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._loop is not loop:
            self._lock, self._loop = asyncio.Lock(), loop
        return self._lock


class StartAttempts:
    """The turns of a store's starts, and how the last one ended."""

    def __init__(self) -> None:
        self.turns = LoopLock()
        self.ended = 0  # starts that ended, by success or by an error
        self.error: Exception | None = None  # the last one's, if it failed


async def start_once(db: StoreConnections) -> None:
    """Start ``db`` unless a start that ended while this one waited for its turn did;
    raise that one's error if it failed."""
    attempts = db.starting
    ended_before = attempts.ended
    async with attempts.turns.lock():
        if db.started and db.schema_checked:
            return
        if attempts.ended != ended_before and attempts.error is not None:
            raise _fresh(attempts.error)
        try:
            await _open_and_check(db)
        except Exception as exc:
            attempts.ended, attempts.error = attempts.ended + 1, _fresh(exc)
            raise
        # (Cancelled: it did not end; those waiting try for themselves.)
        attempts.ended, attempts.error = attempts.ended + 1, None


def _fresh(error: Exception) -> Exception:
    """A copy of ``error`` without its traceback, for one more caller to raise: raised
    by each, one object would gather every caller's frames (and keep them alive)."""
    try:
        copied = copy.copy(error)
    except Exception:  # an exception that cannot be rebuilt from its arguments
        return error
    if type(copied) is not type(error) or str(copied) != str(error):
        return error
    copied.__traceback__ = None
    if hasattr(error, "__notes__"):
        copied.__notes__ = list(error.__notes__)
    copied.__cause__, copied.__suppress_context__ = error.__cause__, True
    return copied


async def _open_and_check(db: StoreConnections) -> None:
    pool = await db.open_pool()
    try:
        # With min_size=0 the pool opened without a connection: this is the first.
        async with pool.acquire(timeout=db.statement_timeout) as conn:
            schema = await conn.fetchval(db.sql(JOBS_SCHEMA), timeout=db.statement_timeout)
            objects = await conn.fetchrow(db.sql(SCHEMA_OBJECTS), timeout=db.statement_timeout)
            identity = await conn.fetchrow(db.sql(IDENTITY), timeout=db.statement_timeout)
    except CONNECT_ERRORS as exc:
        await db.close()
        raise db.cannot_connect(exc) from db.cause(exc)
    except BaseException:
        await db.close()
        raise
    if schema is None or objects is None:
        await db.close()
        raise SchemaMissing(f"the table 'jobs' is not in {db.where()}; {db.setup_hint()}")
    missing = missing_objects(objects)
    # Without these, pqrun's statements fail; without an index or a trigger, they are
    # slower or wake workers later, and `pqrun check` says so.
    fatal = [thing for thing in missing if thing.startswith(("column", "table"))]
    if fatal:
        await db.close()
        raise SchemaMissing(
            f"the schema in {db.where()} is older than this version of pqrun: it lacks "
            f"{', '.join(fatal)}; apply ddl.sql again (safe to repeat): "
            f"{db.setup_hint().removeprefix('apply the schema first: ')}"
        )
    if missing:
        logger.warning(
            "the schema in %s lacks %s; apply ddl.sql again (pqrun setup)",
            db.where(),
            ", ".join(missing),
        )
    db.channel = schema
    assert identity is not None  # a SELECT without FROM has its one row
    db.identity = (identity["server"], identity["database"], identity["jobs_oid"])
    # (PostgreSQL runs READ UNCOMMITTED as READ COMMITTED.)
    db.read_committed = identity["default_isolation"] in ("read committed", "read uncommitted")
    db.schema_checked = True
