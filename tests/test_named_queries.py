"""The named queries of pqrun/_store/sql: what quotes them, uses them and derives from them.

docs/state-machine.md quotes statements by name and cites tests; both must stay true.
Every named query is used by the code, and every name the code asks for exists. The
DB-API form pqrun.sync runs is the asyncpg statement with named placeholders. Every
query that returns jobs returns the columns a Job is built from.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import asyncpg
import psycopg
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import pqrun.sync
from pqrun import Handler, PgJobStore
from pqrun._store.enqueue import ENQUEUE, ENQUEUE_DBAPI
from pqrun._store.queries import STATEMENTS, dbapi_query, parse, qualified, query
from pqrun._store.rows import ENQUEUE_PARAMETERS
from pqrun._store.schema_objects import EXPECTED_COLUMNS
from pqrun.models import (
    CLAIM_COLUMNS,
    CLAIM_DECODED_TIMES,
    CLAIM_SETS,
    JOB_COLUMNS,
    Job,
    JobStatus,
    job_from_claim,
)
from pqrun.testing import make_job

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "pqrun"
STATE_MACHINE = ROOT / "docs" / "state-machine.md"

# The queries that return whole jobs, the columns they return (a claim leaves out what it
# sets to known values), and what each returns besides.
JOB_QUERIES = {
    "pickup": (CLAIM_COLUMNS, CLAIM_DECODED_TIMES),
    "pickup_limited": (CLAIM_COLUMNS, (*CLAIM_DECODED_TIMES, "room_in_seconds")),
    "get_job": (JOB_COLUMNS, ()),
    "list_jobs": (JOB_COLUMNS, ()),
}


def normalised(sql: str) -> str:
    """``sql`` without comments, with each run of whitespace one space."""
    without_comments = re.sub(r"--[^\n]*", " ", sql)
    text = re.sub(r"\s+", " ", without_comments).strip()
    return text.replace("( ", "(").replace(" )", ")")


def quoted_blocks() -> list[tuple[str, list[str], bool]]:
    """(name, pieces, abridged) for each ```sql block of the state machine page; a line
    ``-- ...`` separates pieces (text left out of the quote)."""
    blocks = []
    for block in re.findall(r"```sql\n(.*?)```", STATE_MACHINE.read_text(), re.S):
        first, _, body = block.partition("\n")
        named = re.fullmatch(r"-- name: (\w+)", first.strip())
        assert named, f"a quoted statement must start with '-- name: <query>': {first!r}"
        pieces = re.split(r"^\s*-- \.\.\.[^\n]*$", body, flags=re.M)
        kept = [normalised(piece) for piece in pieces if normalised(piece)]
        blocks.append((named[1], kept, len(pieces) > 1))
    return blocks


def test_the_state_machine_page_quotes_the_named_queries_as_they_are() -> None:
    blocks = quoted_blocks()
    assert len(blocks) >= 10
    for name, pieces, abridged in blocks:
        statement = normalised(query(name))
        at = 0
        for piece in pieces:
            found = statement.find(piece, at)
            assert found >= 0, f"docs/state-machine.md quotes {name!r} wrongly: {piece!r}"
            at = found + len(piece)
        if not abridged:
            assert pieces == [statement], f"docs/state-machine.md quotes only part of {name!r}"


def test_the_tests_the_state_machine_page_cites_exist() -> None:
    cited = 0
    current: str | None = None  # "`::test_x`" refers to the file named last
    for file, test in re.findall(r"`(test_\w+\.py)?(?:::(test_\w+))?`", STATE_MACHINE.read_text()):
        current = file or current
        if not (file or test):
            continue
        assert current is not None
        path = ROOT / "tests" / current
        assert path.exists(), f"docs/state-machine.md cites {current}, which does not exist"
        if test:
            defined = re.search(rf"^(async )?def {test}\(", path.read_text(), re.M)
            assert defined, f"docs/state-machine.md cites {current}::{test}, not defined there"
        cited += 1
    assert cited >= 30


def test_every_named_query_is_used_and_every_name_used_exists() -> None:
    used: set[str] = set()
    for path in SRC.rglob("*.py"):
        used.update(re.findall(r"\b(?:dbapi_)?query\(\s*\"(\w+)\"", path.read_text()))
    assert used - set(STATEMENTS) == set(), "names asked for that no .sql file defines"
    assert set(STATEMENTS) - used == set(), "named queries nothing uses"


def test_every_named_query_says_what_guards_it() -> None:
    sql = resources.files("pqrun._store").joinpath("sql")
    seen = set()
    for entry in sql.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        for block in re.split(r"^(?=-- name: )", entry.read_text(encoding="utf-8"), flags=re.M):
            if not block.startswith("-- name: "):
                continue
            name = block.split()[2]
            seen.add(name)
            comments = re.match(r"((?:--[^\n]*\n)+)", block)
            assert comments is not None, f"{entry.name}: {name} has no comment"
            assert "Guard:" in comments[1], f"{entry.name}: {name} names no guard"
    assert seen == set(STATEMENTS)


def test_an_unknown_name_is_an_error() -> None:
    with pytest.raises(KeyError, match="no_such_query"):
        query("no_such_query")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("-- name: first\nSELECT 1;\n-- name: Second_Query\nSELECT 2;\n", "malformed"),
        ("-- name: first\nSELECT 1;\n--name:second\nSELECT 2;\n", "malformed"),
        ("SELECT 0;\n-- name: first\nSELECT 1;\n", "before the first"),
        ("-- name: first\nSELECT 1;\n-- name: first\nSELECT 2;\n", "defined twice"),
        ("-- name: first\n-- Guard: none\n-- name: second\nSELECT 2;\n", "no statement"),
    ],
)
def test_a_malformed_sql_file_is_refused_at_import(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse("bad.sql", text)


def test_a_well_formed_sql_file_gives_each_statement_without_its_comments() -> None:
    text = "-- the file\n\n-- name: first\n-- Guard: none\nSELECT 1;\n-- name: second\nSELECT $1;\n"
    assert parse("good.sql", text) == {"first": "SELECT 1;\n", "second": "SELECT $1;\n"}


def asyncpg_form(dbapi: str, parameters: tuple[str, ...]) -> str:
    """The DB-API statement with ``$n`` placeholders again."""
    positional = re.sub(
        r"%\((\w+)\)s", lambda m: f"${parameters.index(m[1]) + 1}", dbapi.replace("%%", "\0")
    )
    return positional.replace("\0", "%")


def test_the_dbapi_statements_are_the_asyncpg_ones_with_named_parameters() -> None:
    assert ENQUEUE_PARAMETERS[-1] == "trace_context"  # written by both forms
    assert "%(trace_context)s" in ENQUEUE_DBAPI
    assert asyncpg_form(ENQUEUE_DBAPI, ENQUEUE_PARAMETERS) == ENQUEUE
    # A literal % is doubled for the drivers (none in these statements, but in others).
    assert "%%s" in dbapi_query("reap_stale", ("a", "b", "c", "d"))


def test_the_job_columns_are_defined_once() -> None:
    assert set(JOB_COLUMNS) <= set(EXPECTED_COLUMNS)
    # "awaited" is for store.wait() only; "error_history" is read apart (store.error_history)
    assert set(EXPECTED_COLUMNS) - set(JOB_COLUMNS) == {"awaited", "error_history"}
    job = make_job()
    assert tuple(job.__dataclass_fields__) == JOB_COLUMNS


async def test_every_job_query_returns_the_job_columns(store: PgJobStore) -> None:
    async with store.connection() as conn:
        for name, (job_columns, extra) in JOB_QUERIES.items():
            prepared = await conn.prepare(query(name))
            columns = tuple(attribute.name for attribute in prepared.get_attributes())
            assert columns == (*job_columns, *extra), name


async def test_a_dbapi_enqueue_stores_its_trace_context_as_store_enqueue_does(
    store: PgJobStore, dsn: str, conn: asyncpg.Connection, spans: InMemorySpanExporter
) -> None:
    with psycopg.connect(dsn) as pg:
        one = pqrun.sync.enqueue(pg, "traced", {"n": 1})
        many = pqrun.sync.enqueue_many(pg, [{"job_type": "traced"}, {"job_type": "traced"}])
    by_store = await store.enqueue("traced")
    stored = {
        row["id"]: row["trace_context"]
        for row in await conn.fetch("SELECT id, trace_context FROM jobs")
    }
    assert all(stored[job_id] for job_id in (one, *many, by_store))
    assert stored[many[0]] == stored[many[1]]  # one span for the batch, as enqueue_many
    names = [span.name for span in spans.get_finished_spans()]
    assert names.count("pqrun enqueue traced") == 3


def test_a_job_subclass_builds_itself_from_a_row() -> None:
    class MyJob(Job):
        __slots__ = ()

    row = dict.fromkeys(JOB_COLUMNS) | {
        "payload": '{"a": 1}',
        "status": "READY",
        "result": None,
    }
    job = MyJob.from_record(row)
    assert type(job) is MyJob
    assert job.payload == {"a": 1}
    assert job.status is JobStatus.READY


async def test_a_claimed_job_is_the_row_as_its_claim_left_it(store: PgJobStore) -> None:
    # The claim sends back only CLAIM_COLUMNS; the Job built from them must be the row
    # exactly as get_job() reads it after the claim.
    assert set(CLAIM_COLUMNS) | set(CLAIM_SETS) == set(JOB_COLUMNS)
    job_id = await store.enqueue("t", {"a": [1, 2]}, dedupe_key="k", concurrency_key="c")
    claimed = await store.pickup_batch("w-1", ["t"], 10)
    assert claimed == [await store.get_job(job_id)]
    assert claimed[0].status is JobStatus.RUNNING
    assert claimed[0].locked_by == "w-1"
    row = dict.fromkeys((*CLAIM_COLUMNS, *CLAIM_DECODED_TIMES)) | {"payload": "{}", "locked_at": 0}
    assert type(job_from_claim(row, "w")) is Job


@pytest.mark.parametrize("limited", [False, True], ids=["pickup", "pickup_limited"])
async def test_a_claimed_job_is_the_row_under_an_applications_updated_at_trigger(
    store: PgJobStore, conn: asyncpg.Connection, limited: bool
) -> None:
    # Many applications put a BEFORE UPDATE trigger that sets updated_at on every table.
    await conn.execute(
        """
        CREATE FUNCTION app_touch() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN NEW.updated_at := clock_timestamp(); RETURN NEW; END $$;
        CREATE TRIGGER app_touch BEFORE UPDATE ON jobs
            FOR EACH ROW EXECUTE FUNCTION app_touch();
        """
    )
    try:
        job_id = await store.enqueue("t", {"a": 1})
        if limited:

            async def run(ctx: object) -> None: ...

            claimed, _ = await store.pickup_limited(
                "w-1", "t", Handler(run, concurrency_limit=5), 10
            )
        else:
            claimed = await store.pickup_batch("w-1", ["t"], 10)
        assert claimed == [await store.get_job(job_id)]
    finally:
        await conn.execute("DROP TRIGGER app_touch ON jobs; DROP FUNCTION app_touch()")


EARLIEST = datetime(1, 1, 2, tzinfo=UTC)  # the earliest time a claim sends back


@pytest.mark.parametrize("limited", [False, True], ids=["pickup", "pickup_limited"])
async def test_a_claimed_jobs_times_are_the_rows_to_the_microsecond(
    store: PgJobStore, conn: asyncpg.Connection, limited: bool
) -> None:
    # The claim sends its times as microseconds since 1970 (CLAIM_TIMES), and the worker
    # builds each distinct time once: every Job must still hold its own row's times,
    # whatever the session's time zone, and two jobs must never share a time they don't.
    moments = [
        "0001-01-02 00:00:00.000001+00",
        "1969-12-31 23:59:59.999999+00",
        "2026-02-03 04:05:06.789012+05:45",
        "2026-02-03 04:05:06.789013+05:45",
        "9999-12-29 23:59:59.999999+00",
    ]
    await conn.execute("SET TimeZone TO 'Asia/Kathmandu'")
    try:
        ids = [
            await conn.fetchval(
                "INSERT INTO jobs (job_type, run_after, created_at, updated_at) "
                "VALUES ('t', $1::text::timestamptz, $2::text::timestamptz, "
                "$1::text::timestamptz) RETURNING id",
                moments[0] if at.startswith("9999") else at,
                at,
            )
            for at in moments
        ]
    finally:
        await conn.execute("RESET TimeZone")

    async def run(ctx: object) -> None: ...

    for _ in range(2):  # the second claim builds its times from those the first left
        if limited:
            claimed, _ = await store.pickup_limited(
                "w-1", "t", Handler(run, concurrency_limit=10), 10
            )
        else:
            claimed = await store.pickup_batch("w-1", ["t"], 10)
        rows = {job.id: await store.get_job(job.id) for job in claimed}
        assert sorted(rows) == ids
        for job in claimed:
            row = rows[job.id]
            assert row is not None
            # updated_at is the claim's own time, as get_job reads it after the claim.
            assert job == row, (job, row)
            assert job.heartbeat_at == row.heartbeat_at == row.locked_at
            assert job.run_after.tzinfo is not None
            assert job.created_at.tzinfo is not None
        assert {job.created_at for job in claimed} == {datetime.fromisoformat(at) for at in moments}
        released = await store.release(claimed, None)
        assert len(released) == len(ids)


LATEST = datetime(9999, 12, 30, tzinfo=UTC)  # the latest time a claim sends back


@pytest.mark.parametrize(
    ("sets", "locked_at", "updated_at"),
    [
        ("NEW.updated_at := 'infinity'; NEW.locked_at := '-infinity';", EARLIEST, LATEST),
        ("NEW.updated_at := '20000-01-01';", "the claim's", LATEST),
        ("NEW.updated_at := 'infinity'; NEW.locked_at := 'infinity';", LATEST, LATEST),
        ("NEW.locked_at := NULL;", None, "the row's"),
    ],
    ids=["apart", "updated_at_past_datetime", "both_infinity", "no_locked_at"],
)
@pytest.mark.parametrize("limited", [False, True], ids=["pickup", "pickup_limited"])
async def test_a_claim_reads_times_no_datetime_can_hold(
    store: PgJobStore,
    conn: asyncpg.Connection,
    sets: str,
    locked_at: object,
    updated_at: object,
    limited: bool,
) -> None:
    # An application's trigger may set the claim's times to anything: the claim must
    # neither fail (a failed pickup_limited would stall its type at every claim) nor
    # leave its jobs unreadable after it committed (pickup: stranded RUNNING).
    await conn.execute(
        f"""
        CREATE FUNCTION app_touch() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN {sets} RETURN NEW; END $$;
        CREATE TRIGGER app_touch BEFORE UPDATE ON jobs
            FOR EACH ROW WHEN (NEW.status = 'RUNNING') EXECUTE FUNCTION app_touch();
        """
    )

    async def run(ctx: object) -> None: ...

    try:
        first, second = await store.enqueue_many([{"job_type": "t"}, {"job_type": "t"}])
        if limited:
            claimed, _ = await store.pickup_limited(
                "w-1", "t", Handler(run, concurrency_limit=5), 10
            )
        else:
            claimed = await store.pickup_batch("w-1", ["t"], 10)
        assert sorted(job.id for job in claimed) == [first, second]
        for job in claimed:
            if locked_at == "the claim's":
                assert job.locked_at == job.heartbeat_at
                assert job.locked_at is not None
                assert job.locked_at.year > 2000
            else:
                assert job.locked_at == locked_at
            if updated_at == "the row's":
                row = await store.get_job(job.id)
                assert row is not None
                assert job.updated_at == row.updated_at
            else:
                assert job.updated_at == updated_at
            assert await store.mark_done(job)
    finally:
        await conn.execute("DROP TRIGGER app_touch ON jobs; DROP FUNCTION app_touch()")


@dataclass(frozen=True)
class BigId:
    """A bigint as an application's codec may decode it: no int(), no ordering."""

    text: str


@pytest.mark.parametrize("limited", [False, True], ids=["pickup", "pickup_limited"])
@pytest.mark.parametrize("codec", ["timestamptz", "int8", "int8_object", "every_other"])
async def test_a_claimed_job_is_the_row_on_a_pool_with_codecs_of_its_own(
    dsn: str, store: PgJobStore, limited: bool, codec: str
) -> None:
    # A caller's pool may decode timestamptz, or bigint, its own way (as text, as a class
    # of its own; "every_other": only some of its connections): claims must never fail
    # for it, and the claim's times must come as the pool decodes them, like the row's
    # other times, on the first claim (when the store does not know yet) and after.
    opened = 0

    async def init(conn: asyncpg.Connection) -> None:
        nonlocal opened
        opened += 1
        if codec == "every_other" and opened % 2:
            return
        await conn.set_type_codec(
            "int8" if codec.startswith("int8") else "timestamptz",
            schema="pg_catalog",
            encoder=lambda value: value.text if isinstance(value, BigId) else str(value),
            decoder=BigId if codec == "int8_object" else str,
            format="text",
        )

    async def run(ctx: object) -> None: ...

    def row_id(job: Job) -> int:
        return int(job.id.text if isinstance(job.id, BigId) else job.id)

    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=2, init=init)
    try:
        own = PgJobStore(pool=pool)
        await own.enqueue_many([{"job_type": "t"} for _ in range(6)])
        claims = 0
        turn = 0
        while claims < 6:
            # Every other claim runs while the connection the pool would hand out is held,
            # so that it takes the other one: both kinds are seen.
            turn += 1
            async with AsyncExitStack() as stack:
                if turn % 2:
                    await stack.enter_async_context(pool.acquire())
                if limited:
                    claimed, _ = await own.pickup_limited(
                        "w-1", "t", Handler(run, concurrency_limit=10), 2
                    )
                else:
                    claimed = await own.pickup_batch("w-1", ["t"], 2)
            assert claimed
            claims += len(claimed)
            for job in claimed:
                assert await own.mark_done(job)
                row = await own.get_job(row_id(job))
                assert row is not None
                assert row.status is JobStatus.DONE
        rows = await own.list_jobs(status="DONE", limit=10)
        assert len(rows) == 6
        if codec != "every_other":
            # Where every connection decodes the same way, each claimed Job is the row.
            await own.enqueue("t")
            if limited:
                claimed, _ = await own.pickup_limited(
                    "w-1", "t", Handler(run, concurrency_limit=10), 2
                )
            else:
                claimed = await own.pickup_batch("w-1", ["t"], 2)
            assert claimed == [await own.get_job(row_id(claimed[0]))]
            expected = str if codec == "timestamptz" else datetime
            assert isinstance(claimed[0].locked_at, expected)
    finally:
        await pool.close()


async def test_every_statement_qualified_for_a_schema_needs_no_search_path(
    dsn: str, schemas: Callable[[], str]
) -> None:
    schema = schemas()
    await PgJobStore(dsn, schema=schema).setup()
    conn = await asyncpg.connect(dsn, server_settings={"search_path": "pg_catalog"})
    try:
        for name, statement in STATEMENTS.items():
            in_schema = qualified(statement, f'"{schema}"')
            if in_schema.lstrip().upper().startswith("VACUUM"):
                assert f'"{schema}".jobs' in in_schema
                continue
            # Parsed and planned against the catalog: an unqualified table of pqrun's
            # would not be found (nothing of ours is in pg_catalog).
            await conn.prepare(in_schema)
            assert "public." not in in_schema, name
    finally:
        await conn.close()
