"""pqrun.contrib.django in a real Django project (tests/django_project) on PostgreSQL.

Django's settings are global to a process, so every step runs ``python -m django ...``
in a subprocess, on a database made for this module (without pqrun's schema: the
migration is what puts it there).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import psycopg
import pytest

pytest.importorskip("django")

from pqrun import PgJobStore, ddl_sql
from pqrun.contrib.django._sql import ddl_sha256

from .conftest import with_database

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = "tests.django_project.settings"
# A job's run, a migrate or a worker's start take well under this on a loaded machine.
DEADLINE = 60.0


def fresh_database(server_dsn: str) -> Iterator[str]:
    name = f"pqrun_django_{secrets.token_hex(4)}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(server_dsn, name)
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def django_env(dsn: str, schema: str | None = None) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        # No DSN to fall back on: the commands must find the database in DATABASES.
        if name not in ("PQRUN_DSN", "DATABASE_URL", "PQRUN_SCHEMA")
    }
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    env["DJANGO_SETTINGS_MODULE"] = SETTINGS
    env["PQRUN_TEST_DJANGO_DSN"] = dsn
    if schema:
        env["PQRUN_TEST_DJANGO_SCHEMA"] = schema
    return env


Manage = Callable[..., subprocess.CompletedProcess[str]]


def manage_in(dsn: str, schema: str | None = None) -> Manage:
    def manage(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "django", *args],
            cwd=ROOT,
            env=django_env(dsn, schema),
            capture_output=True,
            text=True,
            timeout=DEADLINE * 2,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"manage.py {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n"
                f"{done.stderr}"
            )
        return done

    return manage


@pytest.fixture(scope="module")
def django_dsn(server_dsn: str) -> Iterator[str]:
    """A database of this module's own, migrated once by Django."""
    for dsn in fresh_database(server_dsn):
        manage_in(dsn)("migrate", "--no-input")
        yield dsn


@pytest.fixture
def manage(django_dsn: str) -> Manage:
    with psycopg.connect(django_dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE jobs, shop_receipt RESTART IDENTITY")
    return manage_in(django_dsn)


def check_schema(dsn: str, schema: str | None = None) -> list[str]:
    async def check() -> list[str]:
        store = PgJobStore(dsn, schema=schema)
        try:
            return await store.check_schema()
        finally:
            await store.close()

    return asyncio.run(check())


def jobs(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT id, job_type, status, payload FROM jobs ORDER BY id").fetchall()


def test_migrate_applies_pqruns_schema_and_again_does_nothing(server_dsn: str) -> None:
    for dsn in fresh_database(server_dsn):
        manage = manage_in(dsn)
        first = manage("migrate", "--no-input")
        assert "Applying pqrun.0001_initial... OK" in first.stdout
        assert check_schema(dsn) == []
        again = manage("migrate", "--no-input")
        assert "No migrations to apply" in again.stdout
        assert check_schema(dsn) == []
        # The unmanaged models are in the migrations: nothing for makemigrations to do.
        manage("makemigrations", "--check", "--dry-run", "pqrun")


def test_migrate_puts_the_schema_in_pqruns_schema_setting(server_dsn: str) -> None:
    schema = f"ns_{secrets.token_hex(3)}"
    for dsn in fresh_database(server_dsn):
        manage = manage_in(dsn, schema)
        manage("migrate", "--no-input")
        assert check_schema(dsn, schema) == []
        with psycopg.connect(dsn) as conn:
            # Django's own tables stayed where the search_path puts them.
            assert conn.execute("SELECT to_regclass('public.django_migrations')").fetchone() != (
                None,
            )
            assert conn.execute("SELECT to_regclass('public.jobs')").fetchone() == (None,)
        enqueued = manage("pqrun", "jobs", "enqueue", "shop.hello", "--json")
        ids = json.loads(manage("shop_enqueue_in_transactions").stdout)
        with psycopg.connect(dsn) as conn:
            found = conn.execute(f'SELECT id FROM "{schema}".jobs ORDER BY id').fetchall()
        assert [row[0] for row in found] == [
            json.loads(enqueued.stdout)["id"],
            ids["committed"],
            ids["encoded"],
            ids["outer"],
        ]


def test_a_change_of_ddl_sql_comes_with_a_migration_that_applies_it() -> None:
    migrations = ROOT / "src" / "pqrun" / "contrib" / "django" / "migrations"
    latest = max(migrations.glob("[0-9][0-9][0-9][0-9]_*.py"))
    assert f'DDL_SHA256 = "{ddl_sha256()}"' in latest.read_text(), (
        f"ddl.sql changed since {latest.name}: add the next migration, which runs "
        "apply_schema as 0001_initial does and records DDL_SHA256 = ddl_sha256()"
    )
    assert ddl_sql()  # the packaged copy is what the migrations apply


def test_manage_py_pqrun_status_reads_databases(manage: Manage, django_dsn: str) -> None:
    manage("pqrun", "jobs", "enqueue", "shop.hello")
    done = manage("pqrun", "status", "--json")
    status = json.loads(done.stdout)
    assert status["counts"]["READY"]["count"] == 1, status


def test_manage_py_pqrun_jobs_enqueue(manage: Manage, django_dsn: str) -> None:
    done = manage("pqrun", "jobs", "enqueue", "shop.hello", "--payload", '{"to": "you"}', "--json")
    job_id = json.loads(done.stdout)["id"]
    assert jobs(django_dsn) == [(job_id, "shop.hello", "READY", {"to": "you"})]


def test_manage_py_pqrun_hides_the_password_of_an_unreachable_database(manage: Manage) -> None:
    done = manage("pqrun", "status", "--database", "unreachable", check=False)
    assert done.returncode == 1
    assert "pqrun:" in done.stderr
    assert "hunter2" not in done.stdout + done.stderr


def test_enqueue_in_transaction_atomic_keeps_only_committed_jobs(
    manage: Manage, django_dsn: str
) -> None:
    ids = json.loads(manage("shop_enqueue_in_transactions").stdout)
    assert set(ids) == {"committed", "rolled_back", "encoded", "outer", "savepoint"}
    kept = {row[0]: row[3] for row in jobs(django_dsn)}
    assert {job_id: payload["case"] for job_id, payload in kept.items()} == {
        ids["committed"]: "commit",
        ids["encoded"]: "encoded",
        ids["outer"]: "outer",
    }
    # PQRUN["JSON_ENCODER"] (DjangoJSONEncoder) wrote what json.dumps refuses.
    assert kept[ids["encoded"]] == {
        "case": "encoded",
        "when": "2026-12-06T09:30:00Z",
        "amount": "9.99",
        "order": "12345678-1234-5678-1234-567812345678",
    }


def test_the_admin_lists_jobs_read_only(manage: Manage, django_dsn: str) -> None:
    done = manage(
        "pqrun", "jobs", "enqueue", "shop.hello", "--payload", '{"pretty": [1, 2]}', "--json"
    )
    job_id = json.loads(done.stdout)["id"]
    pages = json.loads(manage("shop_admin_pages", str(job_id)).stdout)
    for name in ("list", "failed", "ready_of_type", "search_id", "search_type", "job"):
        assert pages[name]["status"] == 200, (name, pages[name]["text"][:2000])
    assert f"/admin/pqrun/job/{job_id}/change/" in pages["list"]["text"]
    assert f"/admin/pqrun/job/{job_id}/change/" in pages["search_id"]["text"]
    assert f"/admin/pqrun/job/{job_id}/change/" not in pages["failed"]["text"]
    assert "/admin/pqrun/job/add/" not in pages["list"]["text"]
    # The payload, indented and escaped, on the job's page; no form to save it.
    assert "&quot;pretty&quot;: [\n    1,\n    2\n  ]" in pages["job"]["text"]
    assert 'name="_save"' not in pages["job"]["text"]
    assert pages["add"]["status"] == 403
    assert pages["delete"]["status"] == 403
    assert pages["post_delete"] == 403
    # Lookups the list does not offer would read the whole table: refused.
    assert pages["lookup_payload"]["status"] == 400
    assert pages["lookup_error_regex"]["status"] == 400
    assert pages["search_superscript"]["status"] == 200  # "²" is no id (nor a crash)
    assert [row[0] for row in jobs(django_dsn)] == [job_id]


def test_a_worker_runs_orm_handlers_and_closes_their_connections(
    manage: Manage, django_dsn: str
) -> None:
    count = 40
    with psycopg.connect(django_dsn) as conn:
        conn.execute(
            "INSERT INTO jobs (job_type, payload) SELECT 'shop.record', '{}' "
            "FROM generate_series(1, %s)",
            [count],
        )
    worker = subprocess.Popen(
        [sys.executable, "-m", "django", "pqrun", "worker", "--concurrency", "4"],
        cwd=ROOT,
        env=django_env(django_dsn),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with psycopg.connect(django_dsn, autocommit=True) as conn:
            deadline = time.monotonic() + DEADLINE
            while time.monotonic() < deadline and worker.poll() is None:
                done = conn.execute("SELECT count(*) FROM jobs WHERE status = 'DONE'").fetchone()
                if done == (count,):
                    break
                time.sleep(0.1)
            statuses = conn.execute("SELECT status, count(*) FROM jobs GROUP BY 1").fetchall()
            assert statuses == [("DONE", count)], statuses
            pids = [
                row[0]
                for row in conn.execute("SELECT DISTINCT backend_pid FROM shop_receipt").fetchall()
            ]
            assert len(conn.execute("SELECT 1 FROM shop_receipt").fetchall()) == count
            # Each job's connection is closed after it (CONN_MAX_AGE = 0): none of the
            # backends the handlers used is still there while the worker runs on.
            deadline = time.monotonic() + DEADLINE / 4
            alive: Any = None
            while time.monotonic() < deadline:
                alive = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", [pids]
                ).fetchone()
                if alive == (0,):
                    break
                time.sleep(0.1)
            assert alive == (0,), f"{alive} of the handlers' {len(pids)} connections left open"
            assert worker.poll() is None
    finally:
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=DEADLINE)
    assert worker.returncode == 0, output


DSN_OF = """
import json, sys
import django
from django.conf import settings
settings.configure(DATABASES={
    alias: {"ENGINE": "django.db.backends.postgresql", "NAME": sys.argv[1],
            "USER": sys.argv[2], "HOST": host, "PORT": "5432"}
    for alias, host in (("no_host", ""), ("socket", "/var/run/postgresql"),
                        ("tcp", "127.0.0.1"))
})
django.setup()
from pqrun.contrib.django.conf import database_dsn
print(json.dumps({alias: database_dsn(alias) for alias in ("no_host", "socket", "tcp")}))
"""


def test_a_database_on_the_local_socket_with_a_port_is_reached(django_dsn: str) -> None:
    # Django's usual settings for a local server: HOST "" (or a socket directory) and
    # PORT "5432". A port in a URL needs a host beside it, so it must go in the query.
    url = urlsplit(django_dsn)
    local = url.hostname in ("127.0.0.1", "localhost") and url.port in (None, 5432)
    if not (local and Path("/var/run/postgresql/.s.PGSQL.5432").exists()):
        pytest.skip("the test server is not the local one on /var/run/postgresql and 5432")
    found = subprocess.run(
        [sys.executable, "-c", DSN_OF, url.path.lstrip("/"), url.username or "postgres"],
        capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )  # fmt: skip
    dsns = json.loads(found.stdout)

    async def server_port(dsn: str) -> int:
        conn = await asyncpg.connect(dsn)
        try:
            port: int = await conn.fetchval("SELECT current_setting('port')::int")
            return port
        finally:
            await conn.close()

    for alias, dsn in dsns.items():
        assert asyncio.run(server_port(dsn)) == 5432, (alias, dsn)


def test_migrate_applies_the_schema_to_pqruns_database_only(
    server_dsn: str, tmp_path: Path
) -> None:
    # The project's default database is SQLite; the queue is PQRUN['DATABASE'].
    for dsn in fresh_database(server_dsn):
        env = {**django_env(dsn), "PQRUN_TEST_DJANGO_SQLITE": str(tmp_path / "app.db")}

        def manage(*args: str, env: dict[str, str] = env) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "django", *args],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=DEADLINE * 2,
            )  # fmt: skip

        plain = manage("migrate", "--no-input")
        assert plain.returncode == 0, plain.stderr  # nothing of pqrun's went to SQLite
        with psycopg.connect(dsn) as conn:  # and the queue's database is not set up yet
            assert conn.execute("SELECT to_regclass('jobs')").fetchone() == (None,)
        queue = manage("migrate", "--no-input", "--database", "queue")
        assert queue.returncode == 0, queue.stderr
        assert check_schema(dsn) == []
        status = manage("pqrun", "status")
        assert status.returncode == 0, status.stderr
