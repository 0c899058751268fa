"""The app's way in: enqueue and enqueue_many, and the pieces pqrun.sync shares.

An enqueue with a dedupe_key that an active job holds returns that job's id; when that
job was committed after the statement's snapshot, neither part of the statement returns
a row and the statement runs again (``dedupe_attempts``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

from pqrun import tracing
from pqrun._json_encoding import JSONEncoding, encode_json
from pqrun._payloads import is_model_class, validate
from pqrun.errors import JobConflict, PayloadInvalid
from pqrun.models import RawJSON, is_pydantic_model
from pqrun.observers import tell

from .queries import dbapi_query, query
from .rows import ENQUEUE_PARAMETERS, NewJobRow, new_job_row
from .session_settings import read_committed

if TYPE_CHECKING:
    from pqrun.observers import JobObserver

    from .connections import Connection, StoreConnections

logger = logging.getLogger("pqrun")
T = TypeVar("T")

ENQUEUE = query("enqueue")
ENQUEUE_MANY = query("enqueue_many")
# ENQUEUE for a DB-API connection (psycopg 2 or 3, Django's connection): the same
# statement with the drivers' named placeholders, for pqrun.sync.
ENQUEUE_DBAPI = dbapi_query("enqueue", ENQUEUE_PARAMETERS)

# How often an enqueue with a dedupe_key is tried when the job holding the key was
# committed after the statement's snapshot (once more is almost always enough).
DEDUPE_TRIES = 5


def dedupe_unresolved(key: str | None) -> str:
    """The message of the JobConflict raised when the tries ran out."""
    return (
        f"dedupe_key {key!r}: an active job holds it but cannot be seen from this "
        "transaction (REPEATABLE READ or SERIALIZABLE sees only its own snapshot); "
        "enqueue from a READ COMMITTED transaction"
    )


def dedupe_attempts(key: str | None) -> Iterator[int]:
    """Loop over this: one pass per try of an enqueue; JobConflict once they ran out."""
    yield from range(DEDUPE_TRIES)
    raise JobConflict(dedupe_unresolved(key))


def tracing_enqueues() -> bool:
    """True when an enqueue makes a span (and stores its trace context)."""
    return tracing.AVAILABLE and tracing.recording()


class EnqueueMethods:
    """PgJobStore's enqueue methods (the app's, and handlers' through ``ctx.store``)."""

    _db: StoreConnections
    _payload_models: dict[str, type[Any]]
    _encoding: JSONEncoding
    observers: tuple[JobObserver, ...]

    def register_payload_model(self, job_type: str, model: type[Any]) -> None:
        """Validate the payload of every ``job_type`` job enqueued here against ``model``.

        A Worker does this for each handler that declares a payload model, so apps that
        enqueue through the worker's store get the check without asking.
        """
        if not is_model_class(model):
            raise TypeError(
                f"the payload model for {job_type!r} must be a Pydantic model class, got {model!r}"
            )
        self._payload_models[job_type] = model

    async def enqueue(
        self,
        job_type: str,
        payload: Any = None,
        *,
        priority: int = 0,
        run_after: datetime | timedelta | None = None,
        dedupe_key: str | None = None,
        max_attempts: int = 5,
        timeout_seconds: int | timedelta | None = None,
        concurrency_key: str | None = None,
        depends_on: Iterable[int] | None = None,
        on_dependency_failure: str = "cancel",
        conn: Connection | None = None,
    ) -> int:
        """Add a job and return its id.

        ``depends_on``: ids of jobs this one waits for. It is WAITING, which no worker
        takes, until they are all DONE; if one ends FAILED or CANCELLED it is cancelled,
        or, with ``on_dependency_failure="run"``, runs once they have all ended
        (docs/workflows.md).

        ``run_after`` is a datetime (a naive one is read as local time) or a delay from
        the database's ``now()``. With a ``dedupe_key`` that an active (READY or RUNNING)
        job already has, nothing is added and that job's id is returned. ``conn`` (or an
        enclosing ``store.transaction()``) makes the job part of your transaction.
        ``timeout_seconds`` is how long one run may take: the worker cancels a handler
        that runs longer and counts the run as a failed attempt (default: no deadline).
        Jobs with the same ``concurrency_key`` count together against their handler's
        ``concurrency_limit_per_key``.

        ``payload`` may be a Pydantic model instance; a dict is validated here when a
        payload model is known for ``job_type`` (see ``register_payload_model``), and an
        invalid one raises PayloadInvalid before anything is written.
        """
        row = new_job_row(
            job_type,
            checked_payload(self._payload_models, job_type, payload),
            priority,
            run_after,
            dedupe_key,
            max_attempts,
            timeout_seconds,
            concurrency_key,
            depends_on,
            on_dependency_failure,
            encoding=self._encoding,
        )
        if tracing_enqueues():
            with tracing.enqueue_span(job_type) as trace_context:
                job_id = await enqueue_row(self._db, row, trace_context, conn)
                tracing.set_enqueued_id(job_id)
        else:
            job_id = await enqueue_row(self._db, row, None, conn)
        for observer in self.observers:
            tell(observer.enqueued, job_type, 1)
        return job_id

    async def enqueue_many(
        self, jobs: Iterable[Mapping[str, Any]], *, conn: Connection | None = None
    ) -> list[int]:
        """Add many jobs in one statement and return their ids, in the order given.

        Each item is a dict of ``enqueue``'s arguments: ``{"job_type": "send_email",
        "payload": {...}, "priority": 5, "dedupe_key": "..."}``; only ``job_type`` is
        required. Dedupe keys work per item as in ``enqueue``: an item whose key an active
        job holds, or an earlier item of the same call holds, gets that job's id. An
        item's ``depends_on`` may name earlier items of the call: ``Earlier(0)``.
        A bad item raises before anything is written.
        """
        rows: list[NewJobRow] = []
        position_of_key: dict[str, int] = {}
        source: list[int] = []  # for each item, the row that carries it
        # For each item, the row an Earlier(i) stands for: None for an item with a
        # dedupe_key, whose job may be one enqueued before (not a row of this statement).
        nameable: list[int | None] = []
        for number, item in enumerate(jobs):
            try:
                if "job_type" in item:
                    checked = checked_payload(
                        self._payload_models, item["job_type"], item.get("payload")
                    )
                    item = {**item, "payload": checked}
                row = new_job_row(**item, encoding=self._encoding, earlier_rows=nameable)
            except TypeError as exc:
                raise TypeError(f"enqueue_many item {number}: {exc}") from exc
            except PayloadInvalid as exc:
                raise PayloadInvalid(f"enqueue_many item {number}: {exc}") from exc
            except ValueError as exc:
                raise ValueError(f"enqueue_many item {number}: {exc}") from exc
            key = row.dedupe_key
            nameable.append(None if key is not None else len(rows))
            if key is not None and key in position_of_key:
                source.append(position_of_key[key])
                continue
            if key is not None:
                position_of_key[key] = len(rows)
            source.append(len(rows))
            rows.append(row)
        if not rows:
            return []
        if tracing_enqueues():
            types = sorted({row.job_type for row in rows})
            with tracing.enqueue_span(types[0] if len(types) == 1 else "*", len(rows)) as trace:
                ids = await enqueue_rows(self._db, rows, source, trace, conn)
        else:
            ids = await enqueue_rows(self._db, rows, source, None, conn)
        if self.observers:
            per_type: dict[str, int] = {}
            for row in rows:
                per_type[row.job_type] = per_type.get(row.job_type, 0) + 1
            for observer in self.observers:
                for job_type, count in per_type.items():
                    tell(observer.enqueued, job_type, count)
        return ids


def checked_payload(models: Mapping[str, type[Any]], job_type: str, payload: Any) -> Any:
    """``payload``, validated against the payload model registered for ``job_type``."""
    model = models.get(job_type) if isinstance(job_type, str) else None
    if model is None or isinstance(payload, model):
        return payload
    if is_pydantic_model(payload) or isinstance(payload, RawJSON):
        # Another model, or JSON text: checked as the JSON the handler will read.
        try:
            data = json.loads(encode_json(payload, f"payload of {job_type!r}"))
        except ValueError as exc:
            raise PayloadInvalid(
                f"the payload of job type {job_type!r} is not valid JSON: {exc}"
            ) from exc
        validate(model, data, job_type)
        return payload
    return validate(model, {} if payload is None else payload, job_type)


async def enqueue_row(
    db: StoreConnections, row: NewJobRow, trace_context: str | None, conn: Connection | None
) -> int:
    """Insert one job (or find the active one holding its dedupe_key); its id."""

    async def insert() -> int:
        async with db.acquire(conn) as c:
            for _ in dedupe_attempts(row.dedupe_key):
                # READ COMMITTED: under a stricter default, a parent locked by a worker's
                # move, or a dedupe key committed after the snapshot, fails the insert.
                job_id: int | None = await read_committed(
                    db,
                    c,
                    lambda: c.fetchval(ENQUEUE, *row, trace_context, timeout=db.statement_timeout),
                )
                if job_id is not None:
                    return job_id
        raise AssertionError("dedupe_attempts() raises once the tries ran out")

    return await deadlock_tries(db, row.depends_on, conn, insert)


#: A statement that inserts dependents is run again this many times in all when the
#: server picks it as a deadlock's victim.
DEADLOCK_TRIES = 3


async def deadlock_tries(
    db: StoreConnections,
    depends_on: str | None,
    conn: Connection | None,
    insert: Callable[[], Awaitable[T]],
) -> T:
    """``insert()``, run again if a deadlock ends it: an insert of dependents locks the
    jobs they depend on, as a batch of outcomes ending them does, in another order
    (rare, and only with depends_on). Not inside the caller's transaction, which the
    deadlock ended: that is the caller's to run again."""
    for tries_left in reversed(range(DEADLOCK_TRIES)):
        try:
            return await insert()
        except asyncpg.DeadlockDetectedError:
            if depends_on is None or not tries_left or conn is not None or db.joined():
                raise
    raise AssertionError("the last try raises")


async def enqueue_rows(
    db: StoreConnections,
    rows: list[NewJobRow],
    source: list[int],
    trace_context: str | None,
    conn: Connection | None,
) -> list[int]:
    """Insert many jobs in one statement; the id for each item (``source``: its row)."""
    # Run again only a batch whose first statement is its only one: with dedupe keys a
    # second statement may follow one that committed, and running all again would insert
    # those rows twice.
    keyed = any(row.dedupe_key is not None for row in rows)
    dependents = None if keyed else next((row.depends_on for row in rows if row.depends_on), None)
    return await deadlock_tries(
        db, dependents, conn, lambda: insert_rows(db, rows, source, trace_context, conn)
    )


async def insert_rows(
    db: StoreConnections,
    rows: list[NewJobRow],
    source: list[int],
    trace_context: str | None,
    conn: Connection | None,
) -> list[int]:
    """enqueue_rows' one try."""
    ids: list[int | None] = [None] * len(rows)
    pending = list(range(len(rows)))
    async with db.acquire(conn) as c:
        for _ in range(DEDUPE_TRIES):
            columns = [list(column) for column in zip(*(rows[i] for i in pending), strict=True)]
            found = await read_committed(
                db,
                c,
                # (Called at once, in this pass: the pass's own columns.)
                lambda: c.fetch(
                    ENQUEUE_MANY,
                    *columns,  # noqa: B023
                    trace_context,
                    timeout=db.statement_timeout,
                ),
            )
            for position, record in zip(pending, found, strict=True):
                ids[position] = record["id"]
            # A key held by a job committed after the statement's snapshot: ask again.
            pending = [i for i in pending if ids[i] is None]
            if not pending:
                return [ids[position] for position in source]  # type: ignore[misc]
    # The key of a row still unresolved: its job stays invisible to this transaction.
    raise JobConflict(dedupe_unresolved(rows[pending[0]].dedupe_key))
