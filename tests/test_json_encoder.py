"""json_encoder: what JSON cannot carry, in payloads, results and schedules' payloads."""

from __future__ import annotations

import enum
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import psycopg
import pytest
from pydantic import BaseModel

import pqrun.sync
from pqrun import JobContext, PgJobStore, Schedule, Worker
from pqrun.testing import RecordingStore, run_handler

from .helpers import QUICK, wait_until


class Color(enum.Enum):
    RED = "red"


WHEN = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
ID = uuid.UUID("12345678-1234-5678-1234-567812345678")
RICH = {
    "when": WHEN,
    "day": date(2024, 5, 1),
    "price": Decimal("19.99"),
    "id": ID,
    "color": Color.RED,
}
# What a handler reads back: plain JSON, the values as their strings.
RICH_AS_JSON = {
    "when": "2024-05-01T12:30:00+00:00",
    "day": "2024-05-01",
    "price": "19.99",
    "id": "12345678-1234-5678-1234-567812345678",
    "color": "red",
}


def common_types(value: Any) -> Any:
    """A default= function, as the docs show it."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


class CommonTypesEncoder(json.JSONEncoder):
    def default(self, o: Any) -> Any:
        return common_types(o)


@pytest.fixture(autouse=True)
def close_sync_connections() -> Iterator[None]:
    yield
    pqrun.sync.close()


@pytest.mark.parametrize(
    ("payload", "path", "kind"),
    [
        ({"when": WHEN}, 'payload["when"]', "datetime.datetime"),
        ({"price": Decimal(1)}, 'payload["price"]', "decimal.Decimal"),
        ({"id": ID}, 'payload["id"]', "uuid.UUID"),
        ({"color": Color.RED}, 'payload["color"]', "tests.test_json_encoder.Color"),
        ({"order": {"lines": [1, {"when": WHEN}]}}, 'payload["order"]["lines"][1]["when"]', ""),
        ([0, (1, {2: ID})], "payload[1][1][2]", "uuid.UUID"),
        (WHEN, "payload", "datetime.datetime"),
    ],
)
async def test_the_default_refuses_naming_the_field_its_type_and_the_fix(
    store: PgJobStore, payload: Any, path: str, kind: str
) -> None:
    with pytest.raises(TypeError) as refused:
        await store.enqueue("x", payload)
    message = str(refused.value)
    assert f"payload of 'x' is not JSON-serializable: {path} is a {kind}" in message
    assert "json_encoder=" in message
    assert "DjangoJSONEncoder" in message
    assert await store.list_jobs() == []


async def test_what_no_encoder_changes_is_named_without_offering_one(store: PgJobStore) -> None:
    with pytest.raises(TypeError, match=r'payload\["ratio"\] is nan') as refused:
        await store.enqueue("x", {"ratio": float("nan")})
    assert "json_encoder" not in str(refused.value)
    with pytest.raises(TypeError, match=r'payload\["a"\] has a key of type tuple'):
        await store.enqueue("x", {"a": {(1, 2): 3}})
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(TypeError, match=r'payload\["self"\] contains itself'):
        await store.enqueue("x", loop)


@pytest.mark.parametrize("encoder", [CommonTypesEncoder, common_types])
async def test_an_encoder_class_or_a_default_function_encodes_payloads(
    dsn: str, store: PgJobStore, encoder: Any
) -> None:
    async with PgJobStore(dsn, json_encoder=encoder) as encoding:
        assert encoding.json_encoder is encoder
        one = await encoding.enqueue("x", {"order": RICH})
        [many] = await encoding.enqueue_many([{"job_type": "x", "payload": [RICH]}])
    first, second = await store.get_job(one), await store.get_job(many)
    assert first is not None
    assert second is not None
    assert first.payload == {"order": RICH_AS_JSON}
    assert second.payload == [RICH_AS_JSON]


async def test_a_type_the_encoder_does_not_know_is_named_with_the_encoder(dsn: str) -> None:
    store = PgJobStore(dsn, json_encoder=common_types)
    with pytest.raises(TypeError) as refused:
        await store.enqueue("x", {"tags": [{1, 2}]})
    message = str(refused.value)
    assert 'payload["tags"][0] is a set' in message
    assert "json_encoder (common_types) does not encode it either" in message
    await store.close()


def test_a_json_encoder_of_the_wrong_kind_is_refused_at_once() -> None:
    with pytest.raises(TypeError, match=r"json_encoder must be a json\.JSONEncoder subclass"):
        PgJobStore("postgresql://unused", json_encoder=json.JSONEncoder())  # type: ignore[arg-type]


async def test_django_json_encoder_works(dsn: str, store: PgJobStore) -> None:
    serializers = pytest.importorskip("django.core.serializers.json")
    django_encoder = serializers.DjangoJSONEncoder
    async with PgJobStore(dsn, json_encoder=django_encoder) as encoding:
        job_id = await encoding.enqueue("x", {"when": WHEN, "price": Decimal("19.99"), "id": ID})
    job = await store.get_job(job_id)
    assert job is not None
    # Django writes datetimes its own way (ISO 8601, "Z" for UTC).
    assert job.payload == {
        "when": "2024-05-01T12:30:00Z",
        "price": "19.99",
        "id": "12345678-1234-5678-1234-567812345678",
    }
    with psycopg.connect(dsn) as connection:
        again = pqrun.sync.enqueue(connection, "x", {"id": ID}, json_encoder=django_encoder)
    found = await store.get_job(again)
    assert found is not None
    assert found.payload == {"id": "12345678-1234-5678-1234-567812345678"}


async def test_sync_enqueue_takes_the_encoder_by_dsn_and_through_psycopg(
    dsn: str, store: PgJobStore
) -> None:
    by_dsn = pqrun.sync.enqueue(dsn, "x", RICH, json_encoder=common_types)
    [many] = pqrun.sync.enqueue_many(
        dsn, [{"job_type": "x", "payload": RICH}], json_encoder=CommonTypesEncoder
    )
    with psycopg.connect(dsn) as connection:
        through = pqrun.sync.enqueue(connection, "x", RICH, json_encoder=CommonTypesEncoder)
        [listed] = pqrun.sync.enqueue_many(
            connection, [{"job_type": "x", "payload": RICH}], json_encoder=common_types
        )
        with pytest.raises(TypeError, match=r'payload\["when"\] is a datetime.datetime'):
            pqrun.sync.enqueue(connection, "x", RICH)
    for job_id in (by_dsn, many, through, listed):
        job = await store.get_job(job_id)
        assert job is not None
        assert job.payload == RICH_AS_JSON
    with pytest.raises(TypeError, match=r'payload\["when"\] is a datetime.datetime'):
        pqrun.sync.enqueue(dsn, "x", RICH)


async def rich_result(ctx: JobContext) -> Any:
    return {"done_at": WHEN, "total": Decimal("3.50")}


async def test_results_are_encoded_with_the_workers_store_encoder(
    dsn: str, store: PgJobStore
) -> None:
    plain = await store.enqueue("rich")
    assert await Worker(store, {"rich": rich_result}, **QUICK).drain() == 1
    failed = await store.get_job(plain)
    assert failed is not None
    assert failed.status == "FAILED"  # the same value would come back on every retry
    assert failed.last_error is not None
    assert 'result["done_at"] is a datetime.datetime' in failed.last_error
    async with PgJobStore(dsn, json_encoder=common_types) as encoding:
        job_id = await encoding.enqueue("rich")
        assert await Worker(encoding, {"rich": rich_result}, **QUICK).drain() == 1
        done = await encoding.get_job(job_id)
    assert done is not None
    assert done.status == "DONE"
    assert done.result == {"done_at": "2024-05-01T12:30:00+00:00", "total": "3.50"}


async def test_schedule_payloads_use_the_workers_store_encoder(
    dsn: str, store: PgJobStore, conn: asyncpg.Connection
) -> None:
    nightly = Schedule("report", every=3600, payload={"since": date(2024, 5, 1)})
    with pytest.raises(TypeError, match=r"schedule 'report''s payload .*\[\"since\"\]"):
        Worker(store, {"report": rich_result}, schedules=[nightly])
    async with PgJobStore(dsn, json_encoder=common_types) as encoding:
        await encoding.declare_schedules([nightly])
        await conn.execute("UPDATE job_schedules SET next_run_at = now() WHERE name = 'report'")
        [job_id], _ = await encoding.fire_due_schedules([nightly])
    job = await store.get_job(job_id)
    assert job is not None
    assert job.payload == {"since": "2024-05-01"}


class Order(BaseModel):
    when: datetime
    price: Decimal


async def typed(ctx: JobContext, order: Order) -> Any:
    # The model turns the stored strings back into a datetime and a Decimal.
    assert order.when == WHEN
    assert order.price == Decimal("19.99")
    return "typed"


async def test_a_payload_model_gives_the_handler_its_types_back(
    dsn: str, store: PgJobStore
) -> None:
    # Enqueued by an app's store that knows no model: the encoder writes strings.
    async with PgJobStore(dsn, json_encoder=common_types) as app_store:
        job_id = await app_store.enqueue("order", {"when": WHEN, "price": Decimal("19.99")})
    assert await Worker(store, {"order": typed}, **QUICK).drain() == 1
    job = await store.get_job(job_id)
    assert job is not None
    assert job.result == "typed"


async def test_the_recording_store_checks_payloads_as_the_apps_store_encodes() -> None:
    async def ship(ctx: JobContext) -> None:
        await ctx.store.enqueue("notify", {"when": WHEN})

    with pytest.raises(TypeError, match=r'payload\["when"\] is a datetime.datetime'):
        await run_handler(ship)
    recording = RecordingStore(json_encoder=common_types)
    await run_handler(ship, store=recording)
    assert recording.enqueued == [{"job_type": "notify", "payload": {"when": WHEN}}]


async def test_sync_enqueue_keeps_a_few_stores_however_many_encoder_objects(
    dsn: str, conn: asyncpg.Connection
) -> None:
    class Encoder:
        def default(self, value: Any) -> Any:
            return str(value)

    before = await _sessions(conn)
    encoder = Encoder()
    for n in range(3 * pqrun.sync.MAX_STORES):
        # A new bound method on each access (equal to the others), then a new lambda
        # on every call: neither may open a pool per call.
        pqrun.sync.enqueue(dsn, "x", {"n": n, "when": WHEN}, json_encoder=encoder.default)
        pqrun.sync.enqueue(dsn, "x", {"n": n, "when": WHEN}, json_encoder=lambda v: str(v))

    async def few_sessions() -> bool:
        return await _sessions(conn) - before <= 2 * (pqrun.sync.MAX_STORES + 1)

    await wait_until(few_sessions, within=30)


async def _sessions(conn: asyncpg.Connection) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
    )
    return count
