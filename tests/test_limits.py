"""What enqueue refuses: values PostgreSQL would refuse with a bare driver error, or
store in a form a worker or the dashboard could not read back (docs/configuration.md,
"Limits on what can be enqueued")."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import psycopg
import pytest
from fastapi import FastAPI

import pqrun
import pqrun.sync
from pqrun import PayloadInvalid, PgJobStore, RawJSON, Schedule, ddl_sql

from .test_cli import pqrun_cmd

# pqrun.limits.MAX_PAYLOAD_DEPTH and MAX_NUMBER_DIGITS, as documented.
MAX_PAYLOAD_DEPTH = 500
MAX_NUMBER_DIGITS = 4000


@pytest.fixture(autouse=True)
def close_sync_connections() -> Iterator[None]:
    yield
    pqrun.sync.close()


def nested(depth: int) -> Any:
    value: Any = 1
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


# -- timeout_seconds --------------------------------------------------------------------


@pytest.mark.parametrize("duration", [timedelta(seconds=-5), timedelta(0), timedelta(days=-1)])
async def test_a_timeout_of_zero_or_less_is_refused_as_a_timedelta_too(
    store: PgJobStore, dsn: str, duration: timedelta
) -> None:
    timeout = duration
    shown = f"{timeout.total_seconds():g} s"
    with pytest.raises(ValueError, match=f"timeout_seconds .*{shown}"):
        await store.enqueue("t", timeout_seconds=timeout)
    with pytest.raises(ValueError, match=f"item 0: timeout_seconds .*{shown}"):
        await store.enqueue_many([{"job_type": "t", "timeout_seconds": timeout}])
    with pytest.raises(ValueError, match=f"timeout_seconds .*{shown}"):
        pqrun.sync.enqueue(dsn, "t", timeout_seconds=timeout)
    with psycopg.connect(dsn) as connection, pytest.raises(ValueError, match="timeout_seconds"):
        pqrun.sync.enqueue(connection, "t", timeout_seconds=timeout)
    with pytest.raises(ValueError, match=f"Schedule 't': timeout_seconds .*{shown}"):
        Schedule("t", every=60, timeout_seconds=timeout)
    assert await store.list_jobs() == []


async def test_a_positive_timeout_is_rounded_up_to_whole_seconds(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    short = await store.enqueue("t", timeout_seconds=timedelta(milliseconds=300))
    longer = await store.enqueue("t", timeout_seconds=timedelta(seconds=2, microseconds=1))
    exact = await store.enqueue("t", timeout_seconds=timedelta(minutes=1))
    stored = await conn.fetch(
        "SELECT timeout_seconds FROM jobs WHERE id = ANY($1) ORDER BY id", [short, longer, exact]
    )
    assert [r[0] for r in stored] == [1, 3, 60]
    assert Schedule("t", every=60, timeout_seconds=timedelta(seconds=0.5)).timeout_seconds == 1


# -- NUL characters and lone surrogates ------------------------------------------------

BAD_TEXT = [("\x00", "NUL"), ("\ud800", "surrogate"), ("ok\udfffok", "surrogate")]


@pytest.mark.parametrize(("bad", "why"), BAD_TEXT)
@pytest.mark.parametrize("field", ["job_type", "dedupe_key", "concurrency_key"])
async def test_nul_and_lone_surrogates_in_text_arguments_are_refused_by_name(
    store: PgJobStore, dsn: str, field: str, bad: str, why: str
) -> None:
    arguments: dict[str, Any] = {"job_type": "t", field: f"a{bad}b"}
    with pytest.raises(ValueError, match=f"^{field} .*{why}"):
        await store.enqueue(**arguments)
    with pytest.raises(ValueError, match=f"^enqueue_many item 1: {field} .*{why}"):
        await store.enqueue_many([{"job_type": "t"}, arguments])
    with psycopg.connect(dsn) as connection, pytest.raises(ValueError, match=f"{field} .*{why}"):
        pqrun.sync.enqueue(connection, **arguments)
    assert await store.list_jobs() == []


@pytest.mark.parametrize(("bad", "why"), BAD_TEXT)
@pytest.mark.parametrize(
    "shape",
    [
        lambda s: {"text": s},
        lambda s: {s: 1},
        lambda s: {"a": [1, {"b": ["x", s]}]},
        lambda s: [{"deep": {s: None}}],
        lambda s: s,
    ],
    ids=["value", "key", "nested-value", "nested-key", "bare-string"],
)
async def test_nul_and_lone_surrogates_in_a_payload_are_refused_as_payload_invalid(
    store: PgJobStore, dsn: str, shape: Any, bad: str, why: str
) -> None:
    payload = shape(bad)
    with pytest.raises(PayloadInvalid, match=f"payload of 't' .*{why}"):
        await store.enqueue("t", payload)
    with pytest.raises(PayloadInvalid, match=f"^enqueue_many item 0: payload of 't' .*{why}"):
        await store.enqueue_many([{"job_type": "t", "payload": payload}])
    with pytest.raises(PayloadInvalid, match=why):
        pqrun.sync.enqueue(dsn, "t", payload)
    with psycopg.connect(dsn) as connection, pytest.raises(PayloadInvalid, match=why):
        pqrun.sync.enqueue(connection, "t", payload)
    with pytest.raises(PayloadInvalid, match=f"schedule 't'.s payload .*{why}"):
        Schedule("t", every=60, payload=payload)
    assert await store.list_jobs() == []


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('{"a": "x\\u0000"}', "NUL"),
        ('{"a": "\x00"}', "NUL"),
        ('{"a": "\\uD800"}', "surrogate"),
        ('{"a": "\\udc00\\ud800"}', "surrogate"),
        ('{"a": "\\ud800x\\udc00"}', "surrogate"),
        ('{"a": "\ud800"}', "surrogate"),
        ('{"a": 1', "not valid JSON"),
    ],
)
async def test_raw_json_payloads_are_checked_the_same_way(
    store: PgJobStore, text: str, why: str
) -> None:
    with pytest.raises(PayloadInvalid, match=f"payload of 't' .*{why}"):
        await store.enqueue("t", RawJSON(text))


async def test_text_that_only_looks_like_a_bad_escape_is_kept(store: PgJobStore) -> None:
    payload = {
        "backslash-u0000": "\\u0000",
        "escaped backslash then NUL-like": "\\\\u0000",
        "pair": "\U0001f600 \\ud800",
        "\\udc00": "key",
    }
    job_id = await store.enqueue("t", payload)
    raw = await store.enqueue("t", RawJSON('{"pair": "\\ud83d\\ude00", "s": "\\\\u0000"}'))
    job = await store.get_job(job_id)
    raw_job = await store.get_job(raw)
    assert job is not None
    assert raw_job is not None
    assert job.payload == payload
    assert raw_job.payload == {"pair": "\U0001f600", "s": "\\u0000"}


# -- what a worker could not read back --------------------------------------------------


async def test_payloads_nested_deeper_than_the_limit_are_refused(store: PgJobStore) -> None:
    job_id = await store.enqueue("t", nested(MAX_PAYLOAD_DEPTH))
    job = await store.get_job(job_id)  # json.loads, as a worker reads it
    assert job is not None
    assert job.payload == nested(MAX_PAYLOAD_DEPTH)
    for depth in (MAX_PAYLOAD_DEPTH + 1, 990, 5000):
        with pytest.raises(PayloadInvalid, match=f"payload of 't' nests .*{MAX_PAYLOAD_DEPTH}"):
            await store.enqueue("t", nested(depth))
        with pytest.raises(PayloadInvalid, match=r"^enqueue_many item 0: payload of 't' nests"):
            await store.enqueue_many([{"job_type": "t", "payload": nested(depth)}])
    deep_text = "[" * 600 + "]" * 600
    with pytest.raises(PayloadInvalid, match="payload of 't' nests arrays/objects 600 deep"):
        await store.enqueue("t", RawJSON(deep_text))
    # Brackets inside strings are not nesting.
    await store.enqueue("t", {"text": "[{" * 5000})


@pytest.mark.parametrize(
    "number", ["1e5000", "-2.5E+4100", "1" * (MAX_NUMBER_DIGITS + 1), "0.5e-4100", "7e99999999"]
)
async def test_raw_json_numbers_a_worker_could_not_read_back_are_refused(
    store: PgJobStore, number: str
) -> None:
    with pytest.raises(PayloadInvalid, match=r"payload of 't' has the number .*digits.*string"):
        await store.enqueue("t", RawJSON(f'{{"n": [1, {number}]}}'))


@pytest.mark.parametrize("number", ["1e300", "-1.5e3990", "1" * MAX_NUMBER_DIGITS, "1e-300"])
async def test_raw_json_numbers_within_the_limit_are_read_back(
    store: PgJobStore, number: str
) -> None:
    job_id = await store.enqueue("t", RawJSON(f'{{"n": {number}}}'))
    job = await store.get_job(job_id)
    assert job is not None
    assert isinstance(job.payload["n"], int | float)


def test_a_dict_payload_cannot_hold_an_unreadable_number() -> None:
    # json.dumps refuses these itself: NaN/inf (allow_nan=False), ints over 4300 digits.
    for value in (float("inf"), 10**5000):
        with pytest.raises(TypeError, match="not JSON-serializable"):
            Schedule("t", every=60, payload={"n": value})


# -- run_after --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "run_after",
    [
        datetime(9999, 12, 31, 23, tzinfo=UTC),
        datetime.max.replace(tzinfo=UTC),
        datetime.max,
        datetime.min,
        datetime(1, 1, 1, 12, tzinfo=UTC),
        timedelta(days=10**8),
        timedelta(days=-(10**6)),
        timedelta.max,
    ],
)
async def test_a_run_after_no_reader_could_read_is_refused(
    store: PgJobStore, dsn: str, run_after: datetime | timedelta
) -> None:
    with pytest.raises(ValueError, match="run_after"):
        await store.enqueue("t", run_after=run_after)
    with pytest.raises(ValueError, match=r"^enqueue_many item 0: run_after"):
        await store.enqueue_many([{"job_type": "t", "run_after": run_after}])
    with psycopg.connect(dsn) as connection, pytest.raises(ValueError, match="run_after"):
        pqrun.sync.enqueue(connection, "t", run_after=run_after)


async def test_run_after_near_the_limits_is_stored_and_read(store: PgJobStore) -> None:
    late = datetime(9999, 12, 30, 23, 59, tzinfo=UTC)
    early = datetime(1, 1, 2, 0, 1, tzinfo=UTC)
    for moment in (late, early):
        job = await store.get_job(await store.enqueue("t", run_after=moment))
        assert job is not None
        assert job.run_after == moment


async def test_the_schema_refuses_a_run_after_no_reader_could_read(
    conn: asyncpg.Connection, store: PgJobStore
) -> None:
    for value in ("infinity", "-infinity", "9999-12-31 12:00+00", "0001-01-01 12:00+00"):
        with pytest.raises(asyncpg.CheckViolationError, match="jobs_run_after_readable"):
            await conn.execute(
                "INSERT INTO jobs (job_type, run_after) VALUES ('t', $1::text::timestamptz)",
                value,
            )
    job_id = await store.enqueue("t")
    with pytest.raises(asyncpg.CheckViolationError, match="jobs_run_after_readable"):
        await conn.execute("UPDATE jobs SET run_after = 'infinity' WHERE id = $1", job_id)


async def test_an_existing_table_gets_the_constraint_without_failing_on_bad_rows(
    conn: asyncpg.Connection, dsn: str
) -> None:
    warnings: list[str] = []
    conn.add_log_listener(lambda _conn, message: warnings.append(str(message)))
    await conn.execute("DROP SCHEMA IF EXISTS pqrun_limits CASCADE; CREATE SCHEMA pqrun_limits")
    try:
        await conn.execute("SET search_path TO pqrun_limits")
        await conn.execute(ddl_sql())
        # A table from before the constraint, holding a row that breaks it.
        await conn.execute("ALTER TABLE jobs DROP CONSTRAINT jobs_run_after_readable")
        await conn.execute("INSERT INTO jobs (job_type, run_after) VALUES ('t', '-infinity')")
        await conn.execute(ddl_sql())  # does not fail: warns, and leaves the rows movable
        assert any("jobs_run_after_readable" in w for w in warnings), warnings
        present = (
            "SELECT convalidated FROM pg_constraint "
            "WHERE conname = $1 AND conrelid = 'jobs'::regclass"
        )
        assert await conn.fetchval(present, "jobs_run_after_readable") is None
        # A NOT VALID constraint would refuse the claim's UPDATE of that row, and so the
        # whole claim: it must still be claimed (its time read back as the earliest one).
        async with PgJobStore(dsn, schema="pqrun_limits") as store:
            (job,) = await store.pickup_batch("w", None, 10)
            assert job.run_after.year == 1
            assert job.run_after.tzinfo is not None
            assert await store.mark_done(job)
        await conn.execute("UPDATE jobs SET run_after = now() WHERE run_after = '-infinity'")
        await conn.execute(ddl_sql())
        assert await conn.fetchval(present, "jobs_run_after_readable") is True
    finally:
        await conn.execute("RESET search_path; DROP SCHEMA pqrun_limits CASCADE")


@pytest.mark.parametrize(
    "moment",
    [
        "9999-12-30 23:59:59.999999+00",
        "0001-01-02 00:00:00.000001+00",
        "now() - interval '2000 years'",
        "now() + interval '7000 years'",
    ],
)
async def test_the_dashboard_and_the_cli_show_any_run_after_the_schema_admits(
    store: PgJobStore, conn: asyncpg.Connection, dsn: str, moment: str
) -> None:
    value = moment if moment.startswith("now()") else f"'{moment}'::timestamptz"
    job_id = await conn.fetchval(
        "INSERT INTO jobs (job_type, run_after, locked_at, status, attempts, locked_by) "
        f"VALUES ('t', {value}, {value}, 'RUNNING', 1, 'w') RETURNING id"
    )
    app = FastAPI()
    app.mount("/jobs", pqrun.dashboard(store))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        for path in ("/jobs/", "/jobs/jobs", f"/jobs/jobs/{job_id}", f"/jobs/_/jobs/{job_id}"):
            page = await http.get(path)
            assert page.status_code == 200, (path, page.text[-500:])
    commands = (
        ["jobs", "list"],
        ["jobs", "list", "--json"],
        ["jobs", "show", str(job_id)],
        ["status"],
    )
    for args in commands:
        done = await asyncio.to_thread(pqrun_cmd, *args, "--dsn", dsn)
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
