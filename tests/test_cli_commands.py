"""Every `pqrun` command, run as a user runs it: as a subprocess, output and exit codes."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from pqrun import PgJobStore
from pqrun._ui.queue_commands import format_status
from pqrun.top import render

from .helpers import wait_until
from .test_cli import pqrun_cmd


async def pqrun(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(pqrun_cmd, *args, **env)


FIXTURE_JOBS = """
INSERT INTO jobs (job_type, payload, status, finished_at, attempts, last_error, run_after)
VALUES ('email', '{"to": "a@example.com"}', 'READY', NULL, 0, NULL, now() - interval '1 minute'),
       ('email', '{}', 'READY', NULL, 0, NULL, now() + interval '1 hour'),
       ('resize', '{}', 'READY', NULL, 0, NULL, now()),
       ('email', '{}', 'DONE', now(), 1, NULL, now()),
       ('email', '{}', 'DONE', now() - interval '2 days', 1, NULL, now()),
       ('resize', '{}', 'FAILED', now(), 5, E'ValueError: bad image\\nTraceback...', now()),
       ('email', '{}', 'FAILED', now(), 5, 'Fail: no address', now()),
       ('email', '{}', 'CANCELLED', now(), 0, NULL, now());
INSERT INTO jobs (job_type, status, attempts, locked_by, locked_at, heartbeat_at)
VALUES ('resize', 'RUNNING', 1, 'w-1', now(), now());
INSERT INTO job_workers (worker_id, host, pid, job_types, concurrency, held_jobs, started_jobs)
VALUES ('w-1', 'host-a', 4242, '{resize,email}', 4,
        ARRAY(SELECT id FROM jobs WHERE status = 'RUNNING'),
        ARRAY(SELECT id FROM jobs WHERE status = 'RUNNING'));
"""


@pytest.fixture
async def filled(store: PgJobStore, conn: asyncpg.Connection) -> PgJobStore:
    await conn.execute(FIXTURE_JOBS)
    return store


async def test_status_counts_by_status_and_type_with_rates_and_workers(
    filled: PgJobStore, dsn: str
) -> None:
    done = await pqrun("status", "--dsn", dsn)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "schema public" in out
    assert "READY                 3  (2 due now, the oldest waiting" in out
    assert "RUNNING               1" in out
    assert "DONE                  2" in out
    assert "FAILED                2" in out
    assert "workers alive: 1" in out
    assert "w-1  pid 4242 on host-a, 1 of 4 slots busy, types resize,email" in out

    as_json = await pqrun("status", "--json", PQRUN_DSN=dsn)
    assert as_json.returncode == 0, as_json.stderr
    status = json.loads(as_json.stdout)
    assert {k: v["count"] for k, v in status["counts"].items()} == {
        "WAITING": 0, "READY": 3, "RUNNING": 1, "DONE": 2, "FAILED": 2, "CANCELLED": 1,
    }  # fmt: skip
    assert all(v["exact"] for v in status["counts"].values())
    assert status["by_type"] == [
        {"job_type": "email", "ready": 2, "due": 1, "running": 0, "waiting": 0, "paused": False},
        {"job_type": "resize", "ready": 1, "due": 1, "running": 1, "waiting": 0, "paused": False},
    ]
    assert 50 < status["oldest_due_seconds"] < 3600
    assert status["throughput"]["DONE"]["last_minute"]["count"] == 1
    assert status["throughput"]["FAILED"]["last_hour"]["count"] == 2
    assert [w["worker_id"] for w in status["workers"]] == ["w-1"]


async def test_status_estimates_beyond_the_count_cap(
    filled: PgJobStore, conn: asyncpg.Connection
) -> None:
    await conn.execute(
        "INSERT INTO jobs (job_type, status, finished_at) "
        "SELECT 'bulk', 'DONE', now() FROM generate_series(1, 5000); ANALYZE jobs"
    )
    status = await filled.queue_status(count_cap=100, rate_cap=100)
    done = status["counts"]["DONE"]
    assert done["exact"] is False
    assert done["at_least"] == 100
    assert 4000 < done["count"] < 6000  # the planner's estimate after ANALYZE
    assert status["counts"]["READY"] == {"count": 3, "exact": True}
    rate = status["throughput"]["DONE"]["last_minute"]
    assert rate["exact"] is False
    assert rate["count"] is None
    assert rate["at_least"] == 100


async def test_a_burst_of_completions_is_not_taken_for_an_hours_worth(
    filled: PgJobStore, conn: asyncpg.Connection
) -> None:
    # 3,500 jobs finished in the last two seconds, then nothing: beyond the cap the
    # hour's count was extrapolated from the newest jobs' rate, 3,600 s of it (pqrun top
    # showed 58,476 "done/hour" while about 3,500 jobs were DONE at all).
    await conn.execute(
        "INSERT INTO jobs (job_type, status, finished_at) SELECT 'bulk', 'DONE', "
        "now() - random() * interval '2 seconds' FROM generate_series(1, 3500)"
    )
    status = await filled.queue_status(rate_cap=2000)
    hour = status["throughput"]["DONE"]["last_hour"]
    assert hour == {
        "count": None,
        "at_least": 2000,
        "per_second": hour["per_second"],
        "exact": False,
    }
    assert hour["per_second"] > 2000 / 3  # the rate of the newest 2,000: a burst
    assert ">=2,000" in format_status(status)
    (rates,) = [line for line in render(status, []) if line.startswith("  last minute")]
    assert rates.split()[-1] == ">=2,000"  # done/hour


async def test_jobs_list_show_retry_and_cancel(filled: PgJobStore, dsn: str) -> None:
    listing = await pqrun("jobs", "list", "--dsn", dsn, "--status", "failed")
    assert listing.returncode == 0, listing.stderr
    rows = listing.stdout.splitlines()[1:]
    assert len(rows) == 2
    assert "resize" in rows[1]
    assert "ValueError: bad image" in rows[1]
    assert "Traceback" not in listing.stdout  # the first line of last_error only

    as_json = json.loads((await pqrun("jobs", "list", "--dsn", dsn, "--json")).stdout)
    assert len(as_json) == 9
    failed_resize = next(
        j for j in as_json if j["job_type"] == "resize" and j["status"] == "FAILED"
    )
    email_failed = next(j for j in as_json if j["job_type"] == "email" and j["status"] == "FAILED")
    ready = next(j for j in as_json if j["status"] == "READY")

    show = await pqrun("jobs", "show", str(ready["id"]), "--dsn", dsn)
    assert show.returncode == 0, show.stderr
    assert "status:          READY" in show.stdout
    assert '"to": "a@example.com"' in show.stdout or "{}" in show.stdout

    missing = await pqrun("jobs", "show", "99999", "--dsn", dsn)
    assert missing.returncode == 1
    assert "no job 99999" in missing.stderr

    assert (await pqrun("jobs", "retry", str(failed_resize["id"]), "--dsn", dsn)).returncode == 0
    again = await pqrun("jobs", "retry", str(failed_resize["id"]), "--dsn", dsn)
    assert again.returncode == 1
    assert "not FAILED or CANCELLED" in again.stderr
    assert (await filled.get_job(failed_resize["id"])).status == "READY"  # type: ignore[union-attr]

    bulk = await pqrun("jobs", "retry", "--failed", "--type", "email", "--dsn", dsn)
    assert bulk.returncode == 0, bulk.stderr
    assert "retried 1 FAILED email jobs" in bulk.stdout
    assert (await filled.get_job(email_failed["id"])).status == "READY"  # type: ignore[union-attr]

    both = await pqrun("jobs", "retry", "7", "--failed", "--dsn", dsn)
    assert both.returncode == 1
    assert "not both" in both.stderr

    cancel = await pqrun("jobs", "cancel", str(ready["id"]), "--dsn", dsn)
    assert cancel.returncode == 0, cancel.stderr
    assert f"job {ready['id']}: CANCELLED" in cancel.stdout
    twice = await pqrun("jobs", "cancel", str(ready["id"]), "--dsn", dsn)
    assert twice.returncode == 1
    assert "not READY or RUNNING" in twice.stderr

    bad_id = await pqrun("jobs", "show", "abc", "--dsn", dsn)
    assert bad_id.returncode == 2
    assert "not a job id" in bad_id.stderr


async def test_retry_failed_reports_jobs_whose_dedupe_key_is_taken(
    store: PgJobStore, dsn: str, conn: asyncpg.Connection
) -> None:
    await conn.execute(
        "INSERT INTO jobs (job_type, status, finished_at, dedupe_key) VALUES "
        "('t', 'FAILED', now(), 'k'), ('t', 'READY', NULL, 'k'), ('t', 'FAILED', now(), NULL)"
    )
    done = await pqrun("jobs", "retry", "--failed", "--dsn", dsn)
    assert done.returncode == 1
    assert "retried 1 FAILED jobs" in done.stdout
    assert "left 1 FAILED: an active job holds their dedupe_key (ids 1)" in done.stderr


async def test_workers_lists_the_registry(
    store: PgJobStore, dsn: str, conn: asyncpg.Connection
) -> None:
    empty = await pqrun("workers", "--dsn", dsn)
    assert empty.returncode == 0, empty.stderr
    assert "no workers registered" in empty.stdout
    await conn.execute(FIXTURE_JOBS)
    listed = await pqrun("workers", "--dsn", dsn)
    assert "w-1  pid 4242 on host-a" in listed.stdout
    as_json = json.loads((await pqrun("workers", "--dsn", dsn, "--json")).stdout)
    assert as_json[0]["job_types"] == ["resize", "email"]


async def test_prune_deletes_old_finished_jobs(
    filled: PgJobStore, dsn: str, conn: asyncpg.Connection
) -> None:
    done = await pqrun("prune", "--dsn", dsn)
    assert done.returncode == 0, done.stderr
    assert "pruned 1 jobs: 1 DONE, 0 FAILED, 0 CANCELLED" in done.stdout
    shorter = await pqrun("prune", "--dsn", dsn, "--keep-done", "0s", "--keep-failed-forever")
    assert "pruned 1 jobs: 1 DONE, 0 FAILED, 0 CANCELLED" in shorter.stdout
    assert await conn.fetchval("SELECT count(*) FROM jobs WHERE status = 'DONE'") == 0
    bad = await pqrun("prune", "--dsn", dsn, "--keep-done", "soon")
    assert bad.returncode == 2
    assert "is not a duration" in bad.stderr


async def test_check_says_current_missing_or_out_of_date(dsn: str) -> None:
    schema = f"cli_{secrets.token_hex(3)}"
    try:
        missing = await pqrun("check", "--dsn", dsn, "--schema", schema)
        assert missing.returncode == 1
        assert f"pqrun setup --schema {schema}" in missing.stderr
        assert "Traceback" not in missing.stderr

        setup = await pqrun("setup", "--dsn", dsn, "--schema", schema)
        assert setup.returncode == 0, setup.stderr
        assert f"schema applied in schema {schema}" in setup.stdout
        current = await pqrun("check", "--dsn", dsn, PQRUN_SCHEMA=schema)
        assert current.returncode == 0, current.stderr
        assert "present and current" in current.stdout

        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'DROP INDEX "{schema}".jobs_finished')
        finally:
            await conn.close()
        outdated = await pqrun("check", "--dsn", dsn, "--schema", schema)
        assert outdated.returncode == 1
        assert "missing: index jobs_finished" in outdated.stderr
        assert f"Run `pqrun setup --schema {schema}`" in outdated.stderr
        assert (await pqrun("setup", "--dsn", dsn, "--schema", schema)).returncode == 0
        assert (await pqrun("check", "--dsn", dsn, "--schema", schema)).returncode == 0
    finally:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


def test_setup_dry_run_with_a_schema_creates_and_enters_it() -> None:
    done = pqrun_cmd("setup", "--dry-run", "--schema", "billing")
    assert done.returncode == 0
    assert done.stdout.startswith(
        'CREATE SCHEMA IF NOT EXISTS "billing";\nSET search_path TO "billing";\n'
    )
    bad = pqrun_cmd("setup", "--dry-run", "--schema", "Bad-Name")
    assert bad.returncode == 2
    assert "schema must be a lower-case name" in bad.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["check"], ["status"], ["status", "--json"], ["jobs", "list"], ["jobs", "show", "1"],
        ["jobs", "retry", "1"], ["jobs", "cancel", "1"], ["workers"], ["prune"], ["top"],
        ["worker", "tests.test_cli_commands:HANDLERS"], ["schedules"], ["schedules", "--json"],
        ["dashboard"],
    ],
)  # fmt: skip
def test_every_database_command_explains_a_missing_or_unreachable_database(
    command: list[str],
) -> None:
    none = pqrun_cmd(*command)
    assert none.returncode == 1
    assert "set PQRUN_DSN or DATABASE_URL" in none.stderr
    dead = pqrun_cmd(*command, PQRUN_DSN="postgresql://u:secret@127.0.0.1:1/db")
    assert dead.returncode == 1
    assert "cannot connect to PostgreSQL at postgresql://u:***@127.0.0.1:1/db" in dead.stderr
    assert "Traceback" not in none.stderr + dead.stderr


async def test_a_database_without_the_schema_says_to_run_setup(server_dsn: str, dsn: str) -> None:
    name = f"cli_empty_{secrets.token_hex(3)}"
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        empty = dsn.rsplit("/", 1)[0] + f"/{name}"
        for command in (["status"], ["jobs", "list"], ["workers"]):
            done = await pqrun(*command, "--dsn", empty)
            assert done.returncode == 1
            assert "apply the schema first: `pqrun setup`" in done.stderr
            assert "Traceback" not in done.stderr
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


async def test_dsn_comes_from_the_option_then_pqrun_dsn_then_database_url(
    store: PgJobStore, dsn: str
) -> None:
    dead = "postgresql://u@127.0.0.1:1/db"
    assert (await pqrun("workers", "--dsn", dsn, PQRUN_DSN=dead)).returncode == 0
    assert (await pqrun("workers", PQRUN_DSN=dsn, DATABASE_URL=dead)).returncode == 0
    assert (await pqrun("workers", PQRUN_DSN=dead, DATABASE_URL=dsn)).returncode == 1
    assert (await pqrun("workers", DATABASE_URL=dsn)).returncode == 0


HANDLERS_MODULE = """
import asyncio
from pathlib import Path
from pqrun import JobContext

async def greet(ctx: JobContext) -> str:
    return "hello " + ctx.job.payload["name"]

async def slow(ctx: JobContext) -> str:
    Path("slow.started").write_text(str(ctx.job.id))  # in the worker's cwd: tmp_path
    await asyncio.sleep(3)
    return "slow done"

handlers = {"greet": greet, "slow": slow}

def make_worker(store):
    from pqrun import Worker
    return Worker(store=store, handlers={"greet": greet}, worker_id="from-factory")

def make_broken_worker(store):
    from pqrun import IdlePollPolicy, Worker

    class Broken(IdlePollPolicy):
        def next_sleep(self, consecutive_idle):
            raise ZeroDivisionError("policy bug")

    return Worker(store=store, handlers={"greet": greet}, idle_policy=Broken())

not_handlers = 42
"""

HANDLERS = {"x": print}


def start_worker(tmp_path: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PQRUN_DSN")}
    return subprocess.Popen(
        [sys.executable, "-m", "pqrun", "worker", *args],
        cwd=tmp_path,
        env={**clean, "WORKER_SHUTDOWN_GRACE": "10", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def stop_once_finished(
    store: PgJobStore,
    process: subprocess.Popen[str],
    job_ids: list[int],
    before_stop: Callable[[], Awaitable[None]] | None = None,
) -> str:
    """Wait for the jobs to be DONE or FAILED (and ``before_stop``), then SIGTERM the
    worker; its stderr."""
    try:

        async def finished() -> bool:
            jobs = [await store.get_job(job_id) for job_id in job_ids]
            return all(job is not None and job.status in ("DONE", "FAILED") for job in jobs)

        await wait_until(finished, within=60)
        if before_stop is not None:
            await before_stop()
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.to_thread(process.communicate, timeout=60)
    finally:
        if process.returncode is None:
            process.kill()
            await asyncio.to_thread(process.wait)
    return stderr


@pytest.mark.parametrize("target", ["myjobs:handlers", "myjobs:make_worker"])
async def test_worker_runs_jobs_and_stops_gracefully_on_sigterm(
    store: PgJobStore, dsn: str, tmp_path: Path, target: str
) -> None:
    (tmp_path / "myjobs.py").write_text(textwrap.dedent(HANDLERS_MODULE))
    first = await store.enqueue("greet", {"name": "ops"})
    process = start_worker(tmp_path, target, "--dsn", dsn)
    slow = 0

    async def start_a_slow_job() -> None:
        nonlocal slow
        assert (await store.get_job(first)).result == "hello ops"  # type: ignore[union-attr]
        if target.endswith("handlers"):
            # A running job finishes within the grace period after SIGTERM. RUNNING is
            # not enough: a job claimed into the prefetch buffer is RUNNING too, and goes
            # back to READY at the stop. The handler says when it has started; it then
            # runs for 3 s more, well inside the 10 s grace.
            slow = await store.enqueue("slow")

            async def started() -> bool:
                return (tmp_path / "slow.started").exists()

            await wait_until(started, within=60)

    stderr = await stop_once_finished(store, process, [first], start_a_slow_job)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "stopped" in stderr
    assert await store.list_workers() == []  # it left the registry
    if target.endswith("handlers"):
        assert (await store.get_job(slow)).status == "DONE"  # type: ignore[union-attr]
    else:
        assert "from-factory" in stderr


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_worker_runs_on_the_event_loop_it_is_given(
    store: PgJobStore, dsn: str, tmp_path: Path, loop: str
) -> None:
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    (tmp_path / "myjobs.py").write_text(textwrap.dedent(HANDLERS_MODULE))
    first = await store.enqueue("greet", {"name": "loop"})
    process = start_worker(tmp_path, "myjobs:handlers", "--dsn", dsn, PQRUN_LOOP=loop)
    stderr = await stop_once_finished(store, process, [first])
    assert process.returncode == 0, stderr
    assert (await store.get_job(first)).status == "DONE"  # type: ignore[union-attr]
    assert f"the worker runs on the {loop} event loop" in stderr
    assert "Traceback" not in stderr


def test_the_event_loop_option_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    from pqrun._ui import event_loop
    from pqrun._ui.command_support import CommandError

    pytest.importorskip("uvloop")
    assert event_loop.chosen_loop("auto") == "uvloop"
    assert event_loop.chosen_loop("asyncio") == "asyncio"
    with pytest.raises(CommandError, match="PQRUN_LOOP='fast': use auto, asyncio, uvloop"):
        event_loop.chosen_loop("fast")
    # A machine without uvloop (it cannot be uninstalled for one test).
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert event_loop.chosen_loop("auto") == "asyncio"
    with pytest.raises(CommandError, match=r"pip install 'pqrun\[uvloop\]'"):
        event_loop.chosen_loop("uvloop")


def test_auto_runs_on_asyncio_when_uvloop_is_installed_but_cannot_be_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pqrun._ui import event_loop
    from pqrun._ui.command_support import CommandError

    # Found on the path, but its import fails (built for another Python, say).
    (tmp_path / "uvloop").mkdir()
    (tmp_path / "uvloop" / "__init__.py").write_text(
        'raise ImportError("loop.cpython-311-x86_64-linux-gnu.so: undefined symbol")\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "uvloop", raising=False)

    async def main() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert event_loop.run_on("auto", main()).startswith("asyncio")
    with pytest.raises(CommandError, match=r"installed but cannot be imported.*undefined symbol"):
        event_loop.chosen_loop("uvloop")


async def test_worker_with_job_types_runs_only_those(
    store: PgJobStore, dsn: str, tmp_path: Path
) -> None:
    (tmp_path / "myjobs.py").write_text(textwrap.dedent(HANDLERS_MODULE))
    slow = await store.enqueue("slow")
    greet = await store.enqueue("greet", {"name": "x"})
    process = start_worker(
        tmp_path, "myjobs:handlers", "--job-types", "greet", "--concurrency", "2", PQRUN_DSN=dsn
    )
    await stop_once_finished(store, process, [greet])
    assert process.returncode == 0
    assert (await store.get_job(greet)).status == "DONE"  # type: ignore[union-attr]
    assert (await store.get_job(slow)).status == "READY"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nomodule_here:handlers"], "cannot import 'nomodule_here'"),
        (["myjobs:missing"], "has no attribute 'missing'"),
        (["myjobs"], "name a module attribute as module:attribute"),
        (["myjobs:not_handlers"], "is a int; point at a handlers dict"),
        (["myjobs:handlers", "--job-types", "nope"], "--job-types nope"),
        (["myjobs:make_worker", "--concurrency", "3"], "is a factory"),
    ],
)
def test_worker_errors_name_the_fix(
    tmp_path: Path, dsn: str, args: list[str], message: str
) -> None:
    (tmp_path / "myjobs.py").write_text(textwrap.dedent(HANDLERS_MODULE))
    process = start_worker(tmp_path, *args, PQRUN_DSN=dsn)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1
    assert message in stderr
    assert "Traceback" not in stderr


async def test_schedules_lists_next_and_last_runs(store: PgJobStore, dsn: str) -> None:
    from pqrun import Schedule

    assert (await pqrun("schedules", "--dsn", dsn)).stdout.startswith("no schedules stored")
    await store.declare_schedules(
        [
            Schedule("cleanup", cron="0 3 * * *", timezone="Europe/Paris"),
            Schedule("sync", every=300, name="sync-eu"),
        ]
    )
    await store.fire_due_schedules([])  # nothing due: nothing changes
    listed = await pqrun("schedules", "--dsn", dsn)
    assert listed.returncode == 0
    lines = listed.stdout.splitlines()
    assert lines[0].startswith("cleanup  cleanup  0 3 * * * Europe/Paris  next ")
    assert "last never" in lines[0]
    assert lines[1].startswith("sync-eu  sync  every 5.0m UTC  next ")
    as_json = json.loads((await pqrun("schedules", "--json", "--dsn", dsn)).stdout)
    assert [item["name"] for item in as_json] == ["cleanup", "sync-eu"]
    assert as_json[1]["every_seconds"] == 300


async def test_a_worker_that_fails_exits_with_a_failure(
    store: PgJobStore, dsn: str, tmp_path: Path
) -> None:
    (tmp_path / "myjobs.py").write_text(textwrap.dedent(HANDLERS_MODULE))
    process = start_worker(tmp_path, "myjobs:make_broken_worker", "--dsn", dsn)
    _, stderr = await asyncio.to_thread(process.communicate, timeout=60)
    assert process.returncode != 0
    assert "policy bug" in stderr


async def test_bad_ports_intervals_and_schemas_are_usage_errors(dsn: str) -> None:
    for command in (
        ["worker", "myjobs:handlers", "--metrics-port", "70000"],
        ["dashboard", "--port", "-1"],
        ["top", "--interval", "0"],
    ):
        done = await pqrun(*command, "--dsn", dsn)
        assert done.returncode == 2, command
        assert "Traceback" not in done.stderr
    bad_env = await pqrun("status", "--dsn", dsn, PQRUN_SCHEMA="Bad-Name")
    assert bad_env.returncode == 2
    assert bad_env.stderr.startswith("pqrun: PQRUN_SCHEMA: ")


async def test_a_metrics_port_in_use_is_a_plain_error(
    store: PgJobStore, dsn: str, tmp_path: Path
) -> None:
    (tmp_path / "myjobs.py").write_text(textwrap.dedent(HANDLERS_MODULE))
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        process = start_worker(tmp_path, "myjobs:handlers", "--dsn", dsn, "--metrics-port", port)
        _, stderr = await asyncio.to_thread(process.communicate, timeout=60)
    assert process.returncode == 1
    assert f"cannot serve metrics on 0.0.0.0:{port}" in stderr
    assert "Traceback" not in stderr


def test_the_store_reads_its_schema_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PQRUN_SCHEMA", "billing")
    assert PgJobStore("postgresql://unused").schema == "billing"
    assert PgJobStore("postgresql://unused", schema="other").schema == "other"


def _options(parser: argparse.ArgumentParser, path: str = "pqrun") -> Iterator[tuple[str, Any]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def test_every_option_and_argument_says_what_it_is_for() -> None:
    from pqrun.cli import build_parser

    silent = [
        f"{path} {'/'.join(action.option_strings) or action.dest}"
        for path, action in _options(build_parser())
        if not action.help
    ]
    assert silent == []


async def test_jobs_enqueue_from_the_shell(store: PgJobStore, dsn: str) -> None:
    first = await pqrun(
        "jobs", "enqueue", "send_email", "--dsn", dsn,
        "--payload", '{"to": "a@example.com"}', "--priority", "3", "--run-after", "1h",
        "--dedupe-key", "welcome-42", "--max-attempts", "2", "--timeout", "30s",
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    job = await store.get_job(int(first.stdout))
    assert job is not None
    assert (job.job_type, job.payload, job.priority) == ("send_email", {"to": "a@example.com"}, 3)
    assert (job.dedupe_key, job.max_attempts, job.timeout_seconds) == ("welcome-42", 2, 30)
    assert job.run_after > job.created_at + timedelta(minutes=59)
    again = await pqrun(
        "jobs", "enqueue", "send_email", "--dsn", dsn, "--dedupe-key", "welcome-42", "--json"
    )
    assert json.loads(again.stdout) == {"id": job.id}  # the active job with that key
    plain = await pqrun("jobs", "enqueue", "tick", "--dsn", dsn)
    plain_job = await store.get_job(int(plain.stdout))
    assert plain_job is not None
    assert plain_job.payload == {}
    bad = await pqrun("jobs", "enqueue", "x", "--dsn", dsn, "--payload", "{to: 1}")
    assert bad.returncode == 2
    assert "is not JSON" in bad.stderr
    assert "--payload '{" in bad.stderr


async def test_worker_logs_one_json_object_per_line_with_the_jobs_fields(
    store: PgJobStore, dsn: str, tmp_path: Path
) -> None:
    (tmp_path / "myjobs.py").write_text(textwrap.dedent(HANDLERS_MODULE))
    bad = await store.enqueue("greet", {}, max_attempts=1)  # KeyError: 'name'
    good = await store.enqueue("greet", {"name": "ops"})
    process = start_worker(
        tmp_path, "myjobs:handlers", "--dsn", dsn, "--log-level", "debug", PQRUN_LOG_FORMAT="json"
    )
    stderr = await stop_once_finished(store, process, [bad, good])
    assert process.returncode == 0, stderr
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    failed = [line for line in lines if line.get("job_id") == bad]
    assert failed, stderr
    assert failed[0]["outcome"] == "FAILED"  # the status the job was left in
    assert failed[0]["job_type"] == "greet"
    assert "KeyError" in failed[0]["message"] + failed[0].get("exception", "")
    assert any(line.get("job_id") == good and line["outcome"] == "DONE" for line in lines)


async def test_an_unknown_log_format_is_refused(dsn: str, tmp_path: Path) -> None:
    (tmp_path / "myjobs.py").write_text(textwrap.dedent(HANDLERS_MODULE))
    process = start_worker(tmp_path, "myjobs:handlers", "--dsn", dsn, PQRUN_LOG_FORMAT="xml")
    _, stderr = await asyncio.to_thread(process.communicate, timeout=60)
    assert process.returncode == 1
    assert "PQRUN_LOG_FORMAT='xml': use plain or json" in stderr


async def test_jobs_cancel_every_active_job_of_a_type(
    store: PgJobStore, dsn: str, conn: asyncpg.Connection
) -> None:
    ready = await store.enqueue_many([{"job_type": "export"}] * 3)
    running = await conn.fetchval(
        "INSERT INTO jobs (job_type, status, locked_by, locked_at, lease_id, attempts) "
        "VALUES ('export', 'RUNNING', 'w', now(), 1, 1) RETURNING id"
    )
    done = await conn.fetchval(
        "INSERT INTO jobs (job_type, status, finished_at) VALUES ('export', 'DONE', now()) "
        "RETURNING id"
    )
    other = await store.enqueue("mail")
    cancelled = await pqrun("jobs", "cancel", "--type", "export", "--dsn", dsn)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "cancelled 4 export jobs" in cancelled.stdout
    statuses = {row["id"]: row["status"] for row in await conn.fetch("SELECT id, status FROM jobs")}
    assert {statuses[i] for i in [*ready, running]} == {"CANCELLED"}
    assert (statuses[done], statuses[other]) == ("DONE", "READY")
    neither = await pqrun("jobs", "cancel", "--dsn", dsn)
    assert neither.returncode == 1
    assert "give a job id, or --type" in neither.stderr
