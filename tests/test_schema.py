"""ddl.sql: applies cleanly (twice), installs where search_path points, and serves the queries."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import pqrun
from pqrun import PgJobStore, SchemaMissing, ddl_sql
from pqrun._store.moves import PICKUP, PICKUP_LIMITED
from pqrun._store.queries import query
from pqrun._store.reaping import REAP_STALE

ROOT = Path(__file__).resolve().parent.parent


def test_packaged_ddl_is_the_repository_ddl() -> None:
    assert pqrun.ddl_sql() == (ROOT / "ddl.sql").read_text()
    assert (ROOT / "src/pqrun/ddl.sql").read_text() == (ROOT / "ddl.sql").read_text()


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed")
def test_psql_applies_ddl_twice_into_the_search_path_schema(dsn: str) -> None:
    env_dsn = dsn + ("&" if "?" in dsn else "?") + "options=-csearch_path%3Dtenant_a"
    subprocess.run(
        ["psql", dsn, "-v", "ON_ERROR_STOP=1", "-c", "CREATE SCHEMA IF NOT EXISTS tenant_a"],
        check=True,
        capture_output=True,
    )
    for _ in range(2):  # the second run is a no-op, not an error
        done = subprocess.run(
            ["psql", env_dsn, "-v", "ON_ERROR_STOP=1", "-f", str(ROOT / "ddl.sql")],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        assert "NOTICE" not in done.stderr  # nothing "already exists, skipping"
    found = subprocess.run(
        ["psql", dsn, "-Atc", "SELECT to_regclass('tenant_a.jobs') IS NOT NULL"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert found.stdout.strip() == "t"
    subprocess.run(["psql", dsn, "-c", "DROP SCHEMA tenant_a CASCADE"], check=True)


async def test_store_setup_applies_schema_in_its_search_path(dsn: str) -> None:
    admin = await asyncpg.connect(dsn)
    await admin.execute("DROP SCHEMA IF EXISTS tenant_b CASCADE; CREATE SCHEMA tenant_b")
    try:
        store = PgJobStore(dsn, server_settings={"search_path": "tenant_b"})
        await store.setup()
        await store.setup()  # again: no error
        job_id = await store.enqueue("t")
        await store.close()
        assert await admin.fetchval("SELECT count(*) FROM tenant_b.jobs WHERE id = $1", job_id)
    finally:
        await admin.execute("DROP SCHEMA tenant_b CASCADE")
        await admin.close()


async def test_applying_ddl_twice_to_a_fresh_schema_says_nothing(
    dsn: str, schemas: Callable[[], str]
) -> None:
    schema = schemas()
    conn = await asyncpg.connect(dsn)
    messages: list[str] = []
    conn.add_log_listener(
        lambda _conn, message: messages.append(f"{message.severity}: {message.message}")
    )
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"; SET search_path TO "{schema}"')
        await conn.execute("SET client_min_messages TO notice")
        await conn.execute(ddl_sql())  # creates everything
        await conn.execute(ddl_sql())  # finds everything there
        assert await conn.fetchval("SELECT to_regclass('jobs')::text") == "jobs"
        assert messages == []
        # The session's own level is put back, so the caller's notices still show.
        assert await conn.fetchval("SHOW client_min_messages") == "notice"
        await conn.execute("DO $$ BEGIN RAISE NOTICE 'still heard'; END $$")
        assert messages == ["NOTICE: still heard"]
    finally:
        await conn.close()


async def test_sql_enqueue_with_on_conflict_infers_the_dedupe_index(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    insert = """
        INSERT INTO jobs (job_type, payload, dedupe_key)
        SELECT 'summarize', jsonb_build_object('conversation_id', n), 'summarize:conv:' || n
        FROM generate_series(1, 3) AS n
        ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL AND status IN ('READY', 'RUNNING')
        DO NOTHING
    """
    assert await conn.execute(insert) == "INSERT 0 3"
    assert await conn.execute(insert) == "INSERT 0 0"
    from_code = await store.enqueue("summarize", dedupe_key="summarize:conv:2")
    assert await conn.fetchval("SELECT count(*) FROM jobs") == 3
    assert from_code == await conn.fetchval(
        "SELECT id FROM jobs WHERE dedupe_key = 'summarize:conv:2'"
    )


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += _nodes(child)
    return found


async def test_pickup_and_reaper_use_their_partial_indexes_on_a_big_table(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    await conn.execute(
        """
        INSERT INTO jobs (job_type, status, finished_at)
        SELECT 'done_kind', 'DONE', now() FROM generate_series(1, 100000);
        INSERT INTO jobs (job_type, run_after)
        SELECT 'later', now() + interval '1 day' FROM generate_series(1, 30000);
        INSERT INTO jobs (job_type) SELECT 't' FROM generate_series(1, 500);
        INSERT INTO jobs (job_type, status, locked_by, locked_at, attempts)
        SELECT 't', 'RUNNING', 'w', now(), 1 FROM generate_series(1, 50);
        ANALYZE jobs;
        INSERT INTO job_type_pauses (job_type) VALUES ('done_kind'), ('other');
        """
    )
    plans = []
    for sql, args in (
        (PICKUP, ("w", ["t", "later"], 10, False)),
        (PICKUP, ("w", None, 10, False)),
        (REAP_STALE, (timedelta(minutes=20), timedelta(seconds=15), timedelta(seconds=10), None)),
    ):
        tx = conn.transaction()
        await tx.start()
        try:
            raw = await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, *args)
        finally:
            await tx.rollback()  # the analyzed UPDATE leaves no trace
        plans.append(_nodes(json.loads(raw)[0]["Plan"]))
    for nodes in plans[:2]:
        kinds = [n["Node Type"] for n in nodes]
        assert "Sort" not in kinds
        # (The paused types, a handful of rows, are read once into a hashed subplan.)
        scanned = {n.get("Relation Name") for n in nodes if n["Node Type"] == "Seq Scan"}
        assert scanned <= {"job_type_pauses"}
        assert any(n.get("Index Name") == "jobs_ready_pickup" for n in nodes)
        scan = next(n for n in nodes if n.get("Index Name") == "jobs_ready_pickup")
        # A top-N walk of the index, not a pass over the 30,000 rows that are not due.
        assert scan["Actual Rows"] <= 10
        assert scan.get("Rows Removed by Filter", 0) <= 10
    reaper = plans[2]
    # (job_workers, one row per worker, may be read whole.)
    assert not [n for n in reaper if n["Node Type"] == "Seq Scan" and n["Relation Name"] == "jobs"]
    assert any(n.get("Index Name") == "jobs_running" for n in reaper)


def _update_scans(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The scans that find the rows an UPDATE of jobs writes (not its InitPlans)."""
    updates = [n for n in _nodes(plan) if n.get("Operation") == "Update"]
    assert len(updates) == 1
    return [
        node
        for child in updates[0].get("Plans", [])
        if child.get("Parent Relationship") != "InitPlan"
        for node in _nodes(child)
        if node.get("Relation Name") == "jobs" or node.get("Index Name")
    ]


@pytest.mark.parametrize("limited", [False, True], ids=["pickup", "pickup_limited"])
@pytest.mark.parametrize("statistics", ["analyzed", "from_an_idle_queue"])
async def test_a_big_claim_among_many_due_jobs_reaches_its_rows_by_the_primary_key(
    dsn: str,
    conn: asyncpg.Connection,
    schemas: Callable[[], str],
    limited: bool,
    statistics: str,
) -> None:
    # A drain's claim: 500 of 20,000 due jobs. Written as a CTE joined back to jobs, the
    # planner hashed every READY row from a sequential scan of the table to find the 500.
    # With statistics from a vacuum that found the queue empty (an idle queue, then a
    # burst), a guard matching the pickup index's predicate let the planner walk that
    # whole index for the chosen ids (177 ms, not 12).
    # A table of its own: no statistics left by other tests.
    schema = schemas()
    await PgJobStore(dsn, schema=schema).setup()
    await conn.execute(f'SET search_path TO "{schema}"')
    if statistics == "from_an_idle_queue":
        await conn.execute("VACUUM ANALYZE jobs")
    await conn.execute("INSERT INTO jobs (job_type) SELECT 't' FROM generate_series(1, 20000)")
    if statistics == "analyzed":
        await conn.execute("ANALYZE jobs")
    if limited:
        sql = PICKUP_LIMITED
        args: tuple[Any, ...] = ("w", "t", 500, None, None, None, timedelta(seconds=1), 200, False)
    else:
        sql, args = PICKUP, ("w", ["t"], 500, False)
    tx = conn.transaction()
    await tx.start()
    try:
        raw = await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, *args)
    finally:
        await tx.rollback()
    plan = json.loads(raw)[0]["Plan"]
    nodes = _nodes(plan)
    scanned = {n.get("Relation Name") for n in nodes if n["Node Type"] == "Seq Scan"}
    assert scanned <= {"job_type_pauses"}
    assert "Hash Join" not in [n["Node Type"] for n in nodes]
    found_by = {n.get("Index Name") for n in _update_scans(plan)} - {None}
    assert found_by == {"jobs_pkey"}
    update = next(n for n in nodes if n.get("Operation") == "Update")
    assert update["Actual Rows"] == 500


# The statements that move or read RUNNING jobs by id, with arguments for 500 claims of
# worker 'w' (ids, lease_ids) or for the first of them.
def _by_claim_arguments(name: str, ids: list[int], leases: list[int]) -> tuple[Any, ...]:
    n, second = len(ids), timedelta(seconds=1)
    return {
        "mark_done_batch": (ids, ["w"] * n, [1] * n, leases, ["null"] * n, [1] * n),
        "delete_done_batch": (ids, ["w"] * n, [1] * n, leases),
        "release": (ids, ["w"] * n, [1] * n, leases, None, "pqrun:test"),
        "heartbeat": ("w", "h", 1, ["t"], 10, ids, leases, "i", 60 * second, 20 * second, 10, ids),
        "still_owned": ("w", ids, leases),
        "mark_done": (ids[0], "w", 1, leases[0], "null", 1),
        "mark_error": (ids[0], "w", 1, leases[0], "boom", False, second, 1),
        "snooze": (ids[0], "w", 1, leases[0], second, 1),
        "run_now": (ids, "pqrun:test"),  # READY jobs by id: none here, but the same plan
        "reap_stale": (60 * second, None, 20 * second, None),  # 'w' has no heartbeat row
    }[name]


@pytest.mark.parametrize(
    "name",
    [
        "mark_done_batch",
        "delete_done_batch",
        "release",
        "heartbeat",
        "still_owned",
        "mark_done",
        "mark_error",
        "snooze",
        "run_now",
        "reap_stale",
    ],
)
async def test_moves_by_claim_find_their_rows_by_the_primary_key_after_a_quiet_spell(
    dsn: str, conn: asyncpg.Connection, schemas: Callable[[], str], name: str
) -> None:
    # Statistics taken while nothing ran (a vacuum or analyze in a quiet spell) show almost
    # no RUNNING job. Tested on jobs alone, the RUNNING guard then made the planner find
    # the rows through jobs_running, stepping over the dead entry of every claim since
    # the last vacuum (150-260 ms for a batch of 500 under autovacuum), or take 500 rows
    # for one and join them to their claims by a nested loop that reads every claim for
    # each row (160 ms).
    schema = schemas()
    await PgJobStore(dsn, schema=schema).setup()
    await conn.execute(f'SET search_path TO "{schema}"')
    # With delete_done, the finished rows left are those kept for a reader: the
    # statistics then show almost no row that may be deleted.
    kept = name == "delete_done_batch"
    await conn.execute(
        "INSERT INTO jobs (job_type, status, finished_at, awaited, has_dependents) "
        "SELECT 't', 'DONE', now(), $1, $1 FROM generate_series(1, 50000)",
        kept,
    )
    await conn.execute("VACUUM ANALYZE jobs")
    await conn.execute("INSERT INTO jobs (job_type) SELECT 't' FROM generate_series(1, 1500)")
    claimed = await conn.fetch(
        "UPDATE jobs SET status = 'RUNNING', locked_by = 'w', attempts = 1, "
        "lease_id = txid_current(), locked_at = now() - interval '1 hour' "
        "WHERE id IN (SELECT id FROM jobs WHERE status = 'READY' ORDER BY id LIMIT 500) "
        "RETURNING id, lease_id"
    )
    # Claims that finished since the last vacuum: dead entries in jobs_running.
    await conn.execute(
        "UPDATE jobs SET status = 'RUNNING', locked_by = 'w', lease_id = 1 WHERE status = 'READY'"
    )
    await conn.execute("UPDATE jobs SET status = 'DONE', finished_at = now() WHERE lease_id = 1")
    ids = [row["id"] for row in claimed]
    leases = [row["lease_id"] for row in claimed]
    tx = conn.transaction()
    await tx.start()
    try:
        raw = await conn.fetchval(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + query(name), *_by_claim_arguments(name, ids, leases)
        )
    finally:
        await tx.rollback()
    plan = json.loads(raw)[0]["Plan"]
    nodes = _nodes(plan)
    # (The reaper finds stale claims through jobs_running on purpose; its UPDATE must not.)
    scans = [n for n in nodes if n.get("Relation Name") == "jobs" and "Scan" in n["Node Type"]]
    if name == "reap_stale":
        scans = _update_scans(plan)
    if name == "delete_done_batch":  # then deletes the row versions it locked, by ctid
        scans = [n for n in scans if n["Node Type"] != "Tid Scan"]
    assert {n.get("Index Name") for n in scans} == {"jobs_pkey"}
    rescanned = [n for n in nodes if n["Node Type"] == "Function Scan" and n["Actual Loops"] > 1]
    assert not rescanned, "each claim is read once, not once per row"
    found = sum(n["Actual Rows"] * n["Actual Loops"] for n in scans)
    batches = {"mark_done_batch", "delete_done_batch", "release", "heartbeat", "still_owned"}
    batches.add("reap_stale")
    assert found == (500 if name in batches else 0 if name == "run_now" else 1)


@pytest.mark.slow
def test_wheel_ships_ddl_and_type_marker(tmp_path: Path) -> None:
    import zipfile

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("pqrun-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("pqrun/ddl.sql").decode() == (ROOT / "ddl.sql").read_text()
        assert "pqrun/py.typed" in archive.namelist()


async def test_a_store_refuses_a_schema_older_than_itself(
    dsn: str, conn: asyncpg.Connection
) -> None:
    await conn.execute("DROP SCHEMA IF EXISTS pqrun_old CASCADE; CREATE SCHEMA pqrun_old")
    try:
        await conn.execute("SET search_path TO pqrun_old")
        await conn.execute(ddl_sql())
        # As a table created by an earlier release, before `awaited` and job_schedules.
        await conn.execute("ALTER TABLE jobs DROP COLUMN awaited CASCADE; DROP TABLE job_schedules")
        await conn.execute("ALTER TABLE job_workers DROP COLUMN held_jobs, DROP COLUMN instance")
        store = PgJobStore(dsn, schema="pqrun_old")
        with pytest.raises(SchemaMissing) as refused:
            await store.start()
        message = str(refused.value)
        assert "older than this version of pqrun" in message
        assert (
            "column jobs.awaited, table job_schedules, column job_workers.held_jobs, "
            "column job_workers.instance" in message
        )
        assert "pqrun setup --schema pqrun_old" in message
        assert not store.started
        await store.setup()  # applying ddl.sql again brings it up to date
        await store.enqueue("after_upgrade")
        await store.close()
    finally:
        await conn.execute("RESET search_path; DROP SCHEMA pqrun_old CASCADE")
