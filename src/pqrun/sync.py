"""Enqueue from synchronous code (Django, Flask, scripts, notebooks): no event loop needed.

    import pqrun.sync

    job_id = pqrun.sync.enqueue(DATABASE_URL, "send_email", {"to": "a@example.com"})

    # Inside your own transaction, with the connection you already have (psycopg 2 or 3,
    # Django's ``django.db.connection``): the job exists if and only if it commits.
    with transaction.atomic():
        order.save()
        pqrun.sync.enqueue(connection, "send_receipt", {"order": order.id})

With a DSN, the jobs go through a PgJobStore that runs on a private event loop in a
background thread (one per process, made on first use and again after a fork), so a call
works whether or not an event loop is running in the calling thread; its pool keeps at
most two connections per DSN and schema. With a DB-API connection, pqrun runs the same
INSERT through that driver, in the caller's transaction, and never commits it. Async code
should ``await store.enqueue(...)`` instead: these calls block the calling thread.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import threading
from collections import OrderedDict
from collections.abc import Coroutine, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, TypeVar

from . import tracing
from ._json_encoding import JSONEncoderOption, JSONEncoding
from ._store.enqueue import ENQUEUE_DBAPI, dedupe_attempts, tracing_enqueues
from ._store.queries import qualified
from ._store.rows import NewJobRow, new_job_row
from ._store.session_settings import check_schema_name, quote_ident
from .store import PgJobStore

T = TypeVar("T")

#: How long a call waits for the database before it raises TimeoutError (seconds).
CALL_TIMEOUT = 60.0


# Stores (each a pool of up to 2 connections) kept for DSN calls.
MAX_STORES = 8


class _Background:
    """An event loop in a daemon thread, with a store per (dsn, schema)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        # By DSN, schema and json_encoder, the most recently used last.
        self.stores: OrderedDict[tuple[str, str | None, object], PgJobStore] = OrderedDict()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.loop.run_forever, name="pqrun-sync", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(CALL_TIMEOUT)

    def store(self, dsn: str, schema: str | None, json_encoder: JSONEncoderOption) -> PgJobStore:
        key = (dsn, schema, _encoder_key(json_encoder))
        with self.lock:  # two threads must not open two stores (and pools) for one key
            found = self.stores.get(key)
            if found is not None:
                self.stores.move_to_end(key)
                return found
            found = self.stores[key] = PgJobStore(
                dsn, schema=schema, min_size=0, max_size=2, json_encoder=json_encoder
            )
            # A new encoder object on every call (a lambda) must not open a pool each
            # time: past MAX_STORES, the least recently used store is closed.
            while len(self.stores) > MAX_STORES:
                _key, oldest = self.stores.popitem(last=False)
                asyncio.run_coroutine_threadsafe(oldest.close(within=5.0), self.loop)
            return found

    def close(self) -> None:
        async def close_all() -> None:
            for store in self.stores.values():
                await store.close(within=5.0)

        with contextlib.suppress(Exception):
            self.run(close_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5.0)


_background: _Background | None = None
_lock = threading.Lock()


def _get_background() -> _Background:
    global _background
    with _lock:
        if _background is None or _background.pid != os.getpid():
            # First use, or a forked child: the parent's thread does not exist here.
            _background = _Background()
        return _background


def _encoder_key(json_encoder: JSONEncoderOption) -> object:
    """The encoder itself when it can be a key (an encoder class, a function; bound
    methods of one object are equal, though each access makes a new one), else its id
    (kept alive by what is stored under it, so the id is not reused meanwhile)."""
    try:
        hash(json_encoder)
    except TypeError:
        return id(json_encoder)
    return json_encoder


# The encodings made for DB-API calls, by their json_encoder; emptied when it grows past
# a few (a new function on every call: no cache for those).
_encodings: dict[object, JSONEncoding] = {}


def _encoding(json_encoder: JSONEncoderOption) -> JSONEncoding:
    key = _encoder_key(json_encoder)
    found = _encodings.get(key)
    if found is None:
        found = JSONEncoding(json_encoder)
        if len(_encodings) >= 16:
            _encodings.clear()
        _encodings[key] = found
    return found


@atexit.register
def close() -> None:
    """Close the connections the DSN form of these functions opened (also run at exit)."""
    global _background
    with _lock:
        background, _background = _background, None
    if background is not None and background.pid == os.getpid():
        background.close()


def enqueue(
    target: str | Any,
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
    schema: str | None = None,
    json_encoder: JSONEncoderOption = None,
) -> int:
    """Add a job from synchronous code and return its id; arguments as ``store.enqueue``.

    ``target`` is a DSN, or an open DB-API connection of PostgreSQL (psycopg 2 or 3,
    Django's ``connection``): then the job is part of that connection's transaction and
    exists once the caller commits. ``schema`` is the schema the queue lives in, as in
    ``PgJobStore(schema=...)`` (default: ``$PQRUN_SCHEMA``, else the search_path).
    ``json_encoder`` encodes what JSON cannot carry, as ``PgJobStore(json_encoder=...)``
    (``DjangoJSONEncoder``, say).
    """
    if isinstance(target, str):
        background = _get_background()
        store = background.store(target, schema, json_encoder)
        return background.run(
            store.enqueue(
                job_type,
                payload,
                priority=priority,
                run_after=run_after,
                dedupe_key=dedupe_key,
                max_attempts=max_attempts,
                timeout_seconds=timeout_seconds,
                concurrency_key=concurrency_key,
                depends_on=depends_on,
                on_dependency_failure=on_dependency_failure,
            )
        )
    row = new_job_row(
        job_type,
        payload,
        priority,
        run_after,
        dedupe_key,
        max_attempts,
        timeout_seconds,
        concurrency_key,
        depends_on,
        on_dependency_failure,
        encoding=_encoding(json_encoder),
    )
    connection = _checked(target)
    if tracing_enqueues():
        # As store.enqueue: the job carries the enqueue span's trace context.
        with tracing.enqueue_span(job_type) as trace_context:
            job_id = _enqueue_dbapi(connection, row, schema, trace_context)
            tracing.set_enqueued_id(job_id)
        return job_id
    return _enqueue_dbapi(connection, row, schema, None)


def enqueue_many(
    target: str | Any,
    jobs: Iterable[Mapping[str, Any]],
    *,
    schema: str | None = None,
    json_encoder: JSONEncoderOption = None,
) -> list[int]:
    """Add many jobs (dicts of ``enqueue``'s arguments) and return their ids, in order.

    With a DSN this is one statement (``store.enqueue_many``); with a DB-API connection,
    one INSERT per job inside the caller's transaction. A bad item raises before
    anything is written. ``schema`` and ``json_encoder`` as in ``enqueue``.
    """
    if isinstance(target, str):
        background = _get_background()
        store = background.store(target, schema, json_encoder)
        return background.run(store.enqueue_many(jobs))
    encoding = _encoding(json_encoder)
    rows: list[NewJobRow] = []
    nameable: list[int | None] = []  # as store.enqueue_many: not an item with a dedupe_key
    for number, item in enumerate(jobs):
        try:
            # Earlier(i) stands for -(i + 1) until item i has its id (one INSERT each).
            rows.append(new_job_row(**item, encoding=encoding, earlier_rows=nameable))
            nameable.append(None if rows[-1].dedupe_key is not None else number)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"enqueue_many item {number}: {exc}") from exc
    connection = _checked(target)

    def insert_all(trace: str | None) -> list[int]:
        ids: list[int] = []
        for row in rows:
            if row.depends_on is not None and "-" in row.depends_on:
                row = row._replace(depends_on=_with_earlier_ids(row.depends_on, ids))
            ids.append(_enqueue_dbapi(connection, row, schema, trace))
        return ids

    if rows and tracing_enqueues():
        # As store.enqueue_many: one span, whose trace context every job carries.
        types = sorted({row.job_type for row in rows})
        with tracing.enqueue_span(types[0] if len(types) == 1 else "*", len(rows)) as trace:
            return insert_all(trace)
    return insert_all(None)


def _with_earlier_ids(literal: str, ids: list[int]) -> str:
    """A depends_on literal whose -n entries (the n-th item, from 1) are ids now."""
    numbers = [int(n) for n in literal.strip("{}").split(",")]
    return "{" + ",".join(str(ids[-n - 1] if n < 0 else n) for n in numbers) + "}"


def _checked(connection: Any) -> Any:
    if not callable(getattr(connection, "cursor", None)):
        raise TypeError(
            f"pqrun.sync needs a DSN string or a DB-API connection to PostgreSQL "
            f"(psycopg, Django's connection), got {connection!r}"
        )
    return connection


def _enqueue_dbapi(
    connection: Any, row: NewJobRow, schema: str | None, trace_context: str | None
) -> int:
    params = {**row._asdict(), "trace_context": trace_context}
    # As PgJobStore: no schema given means $PQRUN_SCHEMA, else the search_path.
    schema = schema if schema is not None else os.environ.get("PQRUN_SCHEMA") or None
    # In the schema by name: the connection's search_path is the caller's, untouched.
    statement = (
        ENQUEUE_DBAPI
        if schema is None
        else qualified(ENQUEUE_DBAPI, quote_ident(check_schema_name(schema)))
    )
    with contextlib.closing(connection.cursor()) as cursor:
        for _ in dedupe_attempts(row.dedupe_key):
            cursor.execute(statement, params)
            found = cursor.fetchone()
            if found is not None:
                return int(found[0])
        raise AssertionError("dedupe_attempts() raises once the tries ran out")
