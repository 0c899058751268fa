"""Every file in examples/ is run here against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import importlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from fastapi.testclient import TestClient

from pqrun import Handler, JobContext, JobStatus, PgJobStore, Retry, Schedule, Worker

from .conftest import reset_jobs
from .helpers import counts, finished_and_created, wait_until

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@pytest.fixture
def fastapi_example(dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    asyncio.run(reset_jobs(dsn))
    monkeypatch.setenv("DATABASE_URL", dsn)
    monkeypatch.setenv("WORKER_REAPER_ENABLED", "false")
    sys.modules.pop("examples.fastapi_app", None)
    yield importlib.import_module("examples.fastapi_app")
    sys.modules.pop("examples.fastapi_app", None)


def _wait_for_status(client: TestClient, job_id: int, status: str) -> dict[str, object]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body: dict[str, object] = client.get(f"/jobs/{job_id}").json()
        if body["status"] == status:
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not reach {status}: {body}")


def test_fastapi_example_enqueues_dedupes_chains_and_runs(fastapi_example: ModuleType) -> None:
    with TestClient(fastapi_example.app) as client:
        first = client.post("/summarize/42").json()["job_id"]
        again = client.post("/summarize/42").json()["job_id"]
        if again != first:
            # The app's own worker may finish the first job before the second request:
            # then a new job is right. The key holds only while the first is active.
            finished, created = asyncio.run(
                finished_and_created(os.environ["DATABASE_URL"], first, again)
            )
            assert finished is not None
            assert finished <= created
        summary = _wait_for_status(client, first, "DONE")
        assert summary["result"]["summary"] == "summary of conversation 42"  # type: ignore[index]
        embed_id = summary["result"]["embed_job"]  # type: ignore[index]
        assert _wait_for_status(client, embed_id, "DONE")["job_type"] == "embed"

        email = client.post("/emails", params={"to": "ada@example.com"}).json()["job_id"]
        assert _wait_for_status(client, email, "DONE")["attempts"] == 1
        bad = client.post("/emails", params={"to": "nobody"}).json()["job_id"]
        failed = _wait_for_status(client, bad, "FAILED")
        assert failed["last_error"] == "Fail: cannot send to 'nobody'"

        later = client.post("/emails", params={"to": "b@example.com", "delay_seconds": 600})
        later_id = later.json()["job_id"]
        assert client.post(f"/jobs/{later_id}/cancel").json() == {"cancelled": True}
        assert client.get(f"/jobs/{later_id}").json()["status"] == "CANCELLED"
        assert client.get("/jobs/999999").status_code == 404
    assert not fastapi_example.store.started  # the lifespan closed what it opened


def test_worker_only_example_runs_jobs_and_stops_on_sigterm(dsn: str) -> None:
    async def enqueue() -> list[int]:
        await reset_jobs(dsn)
        async with PgJobStore(dsn) as store:
            return [await store.enqueue("summarize", {"conversation_id": n}) for n in range(5)]

    ids = asyncio.run(enqueue())
    env = {**os.environ, "DATABASE_URL": dsn, "WORKER_CONCURRENCY": "4"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "examples.worker_only"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        async def all_done() -> bool:
            conn = await asyncpg.connect(dsn)
            try:
                return await counts(conn) == {"DONE": 10}  # 5 summaries + 5 chained embeds
            finally:
                await conn.close()

        asyncio.run(wait_until(all_done, within=60, every=0.1))
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "concurrency 4" in output
    assert "stopped" in output
    assert len(ids) == 5


async def test_enqueue_patterns_sql_runs_and_dedupes(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    script = (EXAMPLES / "enqueue_patterns.sql").read_text()
    try:
        await conn.execute(script)
        await conn.execute(script)  # again: the dedupe keys hold back the repeats
        rows = await conn.fetch(
            "SELECT job_type, count(*) AS n FROM jobs GROUP BY job_type ORDER BY job_type"
        )
        assert {r["job_type"]: r["n"] for r in rows} == {
            "generate_report": 2,
            "send_email": 2,
            "summarize": 3,  # conversations 1 and 2 by the batch, 3 by the trigger
        }
        report = (await store.list_jobs(job_type="generate_report"))[0]
        assert report.priority == 10
        assert report.run_after - report.created_at == timedelta(hours=1)

        async def summarize(ctx: JobContext) -> int:
            return int(ctx.job.payload["conversation_id"])

        async def send_email(ctx: JobContext) -> None:
            return None

        worker = Worker(store=store, handlers={"summarize": summarize, "send_email": send_email})
        assert await worker.drain() == 5  # SQL-enqueued jobs run like any other
    finally:
        await conn.execute(
            "DROP TABLE IF EXISTS conversations CASCADE; DROP FUNCTION IF EXISTS enqueue_summary()"
        )


async def test_cleanup_sql_deletes_only_old_finished_jobs(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    await conn.execute(
        """
        INSERT INTO jobs (job_type, status, finished_at) VALUES
            ('old_done', 'DONE', now() - interval '2 days'),
            ('new_done', 'DONE', now() - interval '1 hour'),
            ('old_failed', 'FAILED', now() - interval '40 days'),
            ('recent_failed', 'FAILED', now() - interval '3 days'),
            ('old_cancelled', 'CANCELLED', now() - interval '10 days');
        INSERT INTO jobs (job_type) VALUES ('ready');
        """
    )
    try:
        await conn.execute((EXAMPLES / "cleanup.sql").read_text())
        left = await conn.fetch("SELECT job_type FROM jobs ORDER BY id")
        assert [r["job_type"] for r in left] == ["new_done", "recent_failed", "ready"]
        # The old failure was deleted by an earlier statement before the archive step:
        # the archive statement itself must still be valid SQL against the real table.
        assert await conn.fetchval("SELECT count(*) FROM jobs_archive") == 0
        await conn.execute(
            "INSERT INTO jobs (job_type, status, finished_at) "
            "VALUES ('to_archive', 'FAILED', now() - interval '40 days')"
        )
        archive_step = (EXAMPLES / "cleanup.sql").read_text().split("-- 4.")[1]
        await conn.execute(archive_step.split("\n", 1)[1])
        assert await conn.fetchval("SELECT job_type FROM jobs_archive") == "to_archive"
    finally:
        await conn.execute("DROP TABLE IF EXISTS jobs_archive")


def _as_role(dsn: str, role: str, password: str) -> str:
    parts = urlsplit(dsn)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{role}:{password}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed")
async def test_least_privilege_role_can_do_everything(
    dsn: str, store: PgJobStore, conn: asyncpg.Connection
) -> None:
    role = f"pqrun_app_{secrets.token_hex(3)}"
    password = secrets.token_hex(8)
    await conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    try:
        psql = await asyncio.create_subprocess_exec(
            "psql", dsn, "-v", "ON_ERROR_STOP=1", "-v", f"role={role}",
            "-f", str(EXAMPLES / "grants.sql"),
        )  # fmt: skip
        assert await psql.wait() == 0
        async with PgJobStore(_as_role(dsn, role, password)) as app_store:
            assert await conn.fetchval("SELECT has_table_privilege($1, 'jobs', 'DELETE')", role) \
                is False  # fmt: skip
            runs = 0

            async def once_more(ctx: JobContext) -> str:
                nonlocal runs
                runs += 1
                if runs == 1:
                    raise Retry()
                return "ok"

            ok = await app_store.enqueue("t", {"a": 1}, dedupe_key="k")
            assert await app_store.enqueue("t", dedupe_key="k") == ok
            assert await app_store.enqueue_many([{"job_type": "t", "dedupe_key": "k"}]) == [ok]
            worker = Worker(store=app_store, handlers={"t": once_more})
            assert await worker.drain() == 2
            # Counted per type: the run retried and the run done.
            assert await conn.fetchval(
                "SELECT sum(done + retried) FROM job_type_minutes WHERE job_type = 't'"
            ) == 2  # fmt: skip
            # Limited handlers claim through job_rate_limits; schedules live in job_schedules.
            await app_store.enqueue_many([{"job_type": "rated"}, {"job_type": "one_at_a_time"}])
            limited = Worker(
                store=app_store,
                handlers={
                    "rated": Handler(once_more, rate_limit=10),
                    "one_at_a_time": Handler(once_more, concurrency_limit=1),
                },
            )
            assert await limited.drain() == 2
            await app_store.declare_schedules([Schedule("t", every=3600)])
            assert [s["name"] for s in await app_store.list_schedules()] == ["t"]
            assert await app_store.cancel((await app_store.enqueue_many([{"job_type": "x"}]))[0])
            cancelled = await app_store.enqueue("t")
            assert await app_store.cancel(cancelled)
            assert await app_store.retry(cancelled)
            await app_store.pickup("w")
            assert await app_store.reap_stale(timedelta(0)) == [(cancelled, JobStatus.READY)]
            # Claims read the paused types; an operator pauses and resumes one.
            assert await app_store.pause("t", reason="incident")
            assert await app_store.pickup("w") is None
            assert [p["job_type"] for p in await app_store.paused_types()] == ["t"]
            assert await app_store.resume("t")
            assert len(await app_store.list_jobs()) == 5
    finally:
        await conn.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")


async def test_scheduling_example_declares_and_fires_its_schedules(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    from examples.scheduling import build_worker

    worker = build_worker(store)
    await worker.start()
    try:

        async def declared() -> bool:
            return len(await store.list_schedules()) == 2

        await wait_until(declared)
        schedules = {s["name"]: s for s in await store.list_schedules()}
        assert schedules["cleanup_sessions"]["timezone"] == "Europe/Paris"
        assert schedules["refresh_rates"]["every_seconds"] == 300
        # A night with no worker running: the 03:00 tick went by.
        await worker.stop()
        await conn.execute(
            "UPDATE job_schedules SET next_run_at = now() - interval '2 hours' "
            "WHERE name = 'cleanup_sessions'"
        )
        await worker.start()

        async def cleaned() -> bool:
            done: int = await conn.fetchval(
                "SELECT count(*) FROM jobs WHERE job_type = 'cleanup_sessions' AND status = 'DONE'"
            )
            return done == 1

        await wait_until(cleaned)
    finally:
        await worker.stop()
    result = await conn.fetchval("SELECT result->>'deleted_older_than_days' FROM jobs")
    assert result == "30"


async def test_flow_control_example_runs_everything_within_its_limits(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    from examples.flow_control import HANDLERS, enqueue_some

    await enqueue_some(store)
    assert await Worker(store=store, handlers=HANDLERS, concurrency=8).drain() == 22
    assert await counts(conn) == {"DONE": 22}
    starts = [
        row["locked_at"]
        for row in await conn.fetch(
            "SELECT locked_at FROM jobs WHERE job_type = 'call_partner_api' ORDER BY 1"
        )
    ]
    for first, sixth in zip(starts, starts[5:], strict=False):
        assert sixth - first >= timedelta(seconds=1)


async def test_typed_payloads_example_refuses_and_runs(
    dsn: str, store: PgJobStore, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from examples import typed_payloads

    monkeypatch.setenv("DATABASE_URL", dsn)
    await typed_payloads.main()
    out = capsys.readouterr().out
    assert "refused: the payload of job type 'send_email' is not a valid EmailArgs" in out
    assert "to: String should match pattern" in out
    assert "subject: Field required" in out
    assert "sent 'Hi' to ada@example.com" in out


def test_wait_for_result_example_answers_with_the_result(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    asyncio.run(reset_jobs(dsn))
    monkeypatch.setenv("DATABASE_URL", dsn)
    sys.modules.pop("examples.wait_for_result", None)
    example = importlib.import_module("examples.wait_for_result")
    try:
        with TestClient(example.app) as client:
            answer = client.post("/thumbnails/cat.png")
            assert answer.status_code == 200
            assert answer.json()["thumbnail"] == "thumbs/cat.png"
    finally:
        sys.modules.pop("examples.wait_for_result", None)
