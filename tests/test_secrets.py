"""No password reaches a message, a log, a repr or the terminal, whatever the DSN's form;
and no database text reaches the terminal with its control characters live.

The secrets are passed to a real server (trust auth ignores them, as a server with
password auth would not) and to a closed port, and looked for everywhere they could show.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import traceback
from datetime import UTC, datetime
from urllib.parse import urlsplit

import asyncpg
import pytest

from pqrun import DatabaseUnavailable, PgJobStore, Worker
from pqrun._store.secrets import redact_dsn
from pqrun.errors import PqrunError
from pqrun.top import render

from .test_cli import pqrun_cmd

# Distinctive words: none of them may show up anywhere, in any spelling of the DSN.
SECRET = "k9Tr0ub4dor"
SECOND = "xk9Staple"
WORDS = (SECRET, SECOND)

# DSN forms, by name: (template, the raw secret texts it holds). {host} {port} {user}
# {db} are filled in per target. Percent-encoded forms hold the secret encoded too.
FORMS: dict[str, str] = {
    "url-userinfo": "postgresql://{user}:" + SECRET + "@{host}:{port}/{db}",
    "url-empty-user": "postgresql://:" + SECRET + "@{host}:{port}/{db}",
    "url-userinfo-encoded": "postgresql://{user}:%6B9Tr0ub4dor%40" + SECOND + "@{host}:{port}/{db}",
    # asyncpg reads an unencoded [...] as an IPv6 address and quotes it when it is not.
    "url-userinfo-brackets": "postgresql://{user}:k9[Tr0ub4dor]@{host}:{port}/{db}",
    "url-query-password": "postgresql://{user}@{host}:{port}/{db}?password=" + SECRET,
    "url-query-after-others": (
        "postgresql://{user}@{host}:{port}/{db}?application_name=t&password=" + SECRET
    ),
    "url-query-upper-case": "postgresql://{user}@{host}:{port}/{db}?PASSWORD=" + SECRET,
    "url-query-sslpassword": "postgresql://{user}@{host}:{port}/{db}?sslpassword=" + SECRET,
    "url-query-encoded": (
        "postgresql://{user}@{host}:{port}/{db}?pass%77ord=%6B9Tr0ub4dor+" + SECOND
    ),
    "keyword-value": "host={host} port={port} user={user} password=" + SECRET + " dbname={db}",
    "keyword-value-quoted": (
        "host={host} port={port} user={user} password='" + SECRET + " " + SECOND + "' dbname={db}"
    ),
}


# What of the secrets must not appear: the words, and their percent-encoded spelling.
SPELLINGS = (*WORDS, "Tr0ub4dor")


def leaked(text: str) -> list[str]:
    return [word for word in SPELLINGS if word in text]


@pytest.fixture(params=["closed-port", "wrong-database"])
def target(request: pytest.FixtureRequest, server_dsn: str) -> dict[str, str]:
    """Where the DSNs point: a port nothing listens on, or the real server with a
    database that does not exist."""
    server = urlsplit(server_dsn)
    if request.param == "closed-port":
        return {"host": "127.0.0.1", "port": "1", "user": "postgres", "db": "nowhere"}
    return {
        "host": server.hostname or "127.0.0.1",
        "port": str(server.port or 5432),
        "user": server.username or "postgres",
        "db": "pqrun_no_such_database",
    }


@pytest.fixture(params=sorted(FORMS))
def bad_dsn(request: pytest.FixtureRequest, target: dict[str, str]) -> str:
    return FORMS[request.param].format(**target)


def test_redact_dsn_hides_every_form_of_password() -> None:
    from pqrun._store.secrets import redact_secrets  # new with this test: main lacks it

    cases = {
        "postgresql://u:pw@h/db": "postgresql://u:***@h/db",
        "postgresql://:pw@h/db": "postgresql://:***@h/db",
        "postgresql://u@h/db?password=pw": "postgresql://u@h/db?password=***",
        "postgresql://u@h/db?a=1&PassWord=pw&b=2": "postgresql://u@h/db?a=1&PassWord=***&b=2",
        "postgresql://u@h/db?sslpassword=pw": "postgresql://u@h/db?sslpassword=***",
        "postgresql://u@h/db?pass%77ord=p%77": "postgresql://u@h/db?pass%77ord=***",
        "postgres://u:p@ss@h1:5432,h2/db": "postgres://u:***@h1:5432,h2/db",
        "postgresql://u:pa/ss#x@h/db": "postgresql://u:***@h/db",
        "postgresql://u:pw@[::1/db": "postgresql://u:***@[::1/db",
        "host=h user=u password=pw dbname=d": "host=h user=u password=*** dbname=d",
        "host=h password = 'a b\\' c' dbname=d": "host=h password = *** dbname=d",
        "host=h sslpassword=pw": "host=h sslpassword=***",
        "postgresql://u@h/db": "postgresql://u@h/db",
        "host=h user=u": "host=h user=u",
    }
    for dsn, expected in cases.items():
        assert redact_dsn(dsn) == expected, dsn
    assert redact_secrets(f"boom {SECRET} and %6B9Tr0ub4dor", "postgresql://u:%6B9Tr0ub4dor@h") == (
        "boom *** and ***"
    )


async def test_a_store_that_cannot_connect_tells_no_secret(bad_dsn: str) -> None:
    store = PgJobStore(bad_dsn, connect_timeout=3)
    assert not leaked(repr(store)), repr(store)
    with pytest.raises(DatabaseUnavailable) as caught:
        await store.start()
    # The message and everything a traceback would print (the causes included).
    shown = "".join(traceback.format_exception(caught.value))
    assert not leaked(shown), shown
    await store.close()


@pytest.mark.parametrize("form", ["url-userinfo-brackets", "url-query-password", "keyword-value"])
async def test_a_pool_without_connections_tells_no_secret_at_first_use(form: str) -> None:
    """min_size=0 (as pqrun.sync uses): the first connection is made on first use."""
    bad = FORMS[form].format(host="127.0.0.1", port="1", user="postgres", db="nowhere")
    store = PgJobStore(bad, min_size=0, connect_timeout=3)
    with pytest.raises(DatabaseUnavailable) as caught:
        await store.get_job(1)
    shown = "".join(traceback.format_exception(caught.value))
    assert not leaked(shown), shown
    await store.close()


async def test_a_worker_that_cannot_connect_logs_no_secret(
    bad_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def noop(ctx: object) -> None:
        return None

    store = PgJobStore(bad_dsn, connect_timeout=3)
    worker = Worker(store, {"t": noop}, worker_id="w-secrets")
    running = asyncio.ensure_future(worker.run())
    deadline = asyncio.get_running_loop().time() + 10
    # Until the fetch loop and the LISTEN loop have each said why they cannot connect.
    while asyncio.get_running_loop().time() < deadline and not running.done():
        if "cannot LISTEN" in caplog.text and "database error" in caplog.text:
            break
        await asyncio.sleep(0.05)
    worker.request_stop()
    with contextlib.suppress(PqrunError):  # whatever stopped it, only its words matter
        await asyncio.wait_for(running, 30)
    assert "database error" in caplog.text or "failed" in caplog.text
    assert not leaked(caplog.text), caplog.text


def test_pqrun_status_on_a_database_it_cannot_use_tells_no_secret(bad_dsn: str) -> None:
    done = pqrun_cmd("status", "--dsn", bad_dsn)
    assert done.returncode != 0
    assert not leaked(done.stdout + done.stderr), done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("form", sorted(FORMS))
async def test_a_password_on_a_reachable_server_is_not_shown(
    form: str, server_dsn: str, dsn: str
) -> None:
    """Trust auth ignores the password; messages from a connected store still hide it."""
    server = urlsplit(dsn)
    where = {
        "host": server.hostname or "127.0.0.1",
        "port": str(server.port or 5432),
        "user": server.username or "postgres",
        "db": server.path.lstrip("/"),
    }
    with_password = FORMS[form].format(**where)
    # A schema that does not exist: the error names where it looked, the DSN included.
    store = PgJobStore(with_password, schema="pqrun_nothing_here", connect_timeout=3)
    assert not leaked(repr(store))
    # asyncpg hands a query parameter it does not know (PASSWORD) to the server as a
    # setting, which the server refuses by name: a PostgresError, not the store's.
    with pytest.raises((PqrunError, asyncpg.PostgresError)) as caught:
        await store.start()
    shown = "".join(traceback.format_exception(caught.value))
    assert not leaked(shown), shown
    await store.close()
    done = await asyncio.to_thread(
        pqrun_cmd, "status", "--schema", "pqrun_nothing_here", "--dsn", with_password
    )
    assert done.returncode == 1
    assert not leaked(done.stdout + done.stderr), done.stderr


def test_a_dsn_from_the_environment_is_not_shown_either(server_dsn: str) -> None:
    bad = FORMS["url-query-password"].format(
        host="127.0.0.1", port="1", user="postgres", db="nowhere"
    )
    for variable in ("PQRUN_DSN", "DATABASE_URL"):
        done = pqrun_cmd("jobs", "list", **{variable: bad})
        assert done.returncode == 1
        assert "cannot connect to PostgreSQL at" in done.stderr
        assert not leaked(done.stdout + done.stderr), done.stderr


# -- terminal escapes -----------------------------------------------------------------

EVIL = "evil\x1b[2J\x07"
EVIL_SHOWN = "evil\\x1b[2J\\x07"


@pytest.fixture
async def evil(store: PgJobStore, conn: asyncpg.Connection) -> PgJobStore:
    """A job, a worker and a schedule whose texts carry escape sequences."""
    await conn.execute(
        """
        INSERT INTO jobs (job_type, status, attempts, dedupe_key, last_error, finished_at)
        VALUES ($1, 'FAILED', 5, NULL, $2, now());
        INSERT INTO jobs (job_type, status, dedupe_key) VALUES ($1, 'READY', $3);
        INSERT INTO job_workers (worker_id, host, pid, job_types, concurrency)
        VALUES ($4, $4, 1, ARRAY[$1], 1);
        INSERT INTO job_schedules (name, job_type, every_seconds, next_run_at, timezone)
        VALUES ($4, $1, 60, now(), $4);
        """.replace("$1", "$x$" + EVIL + "$x$")
        .replace("$2", "$x$" + "Boom\x1b]0;pwned\x07\nsecond line\x1b[31m" + "$x$")
        .replace("$3", "$x$" + "key\x1b[1m" + "$x$")
        .replace("$4", "$x$" + "w\x1b[5m\r" + "$x$")
    )
    return store


def no_control(text: str) -> bool:
    return not any((ord(c) < 32 and c != "\n") or 0x7F <= ord(c) < 0xA0 for c in text)


@pytest.mark.parametrize(
    "command",
    [["status"], ["jobs", "list"], ["jobs", "show", "1"], ["jobs", "show", "2"], ["workers"],
     ["schedules"], ["jobs", "list", "--type", EVIL]],
)  # fmt: skip
async def test_the_cli_shows_control_characters_escaped(
    evil: PgJobStore, dsn: str, command: list[str]
) -> None:
    done = await asyncio.to_thread(pqrun_cmd, *command, "--dsn", dsn)
    assert done.returncode == 0, done.stderr
    assert no_control(done.stdout + done.stderr), repr(done.stdout)
    assert "\\x1b" in done.stdout


@pytest.mark.parametrize(
    "command",
    [["status"], ["jobs", "list"], ["jobs", "show", "1"], ["workers"], ["schedules"]],
)
async def test_json_output_keeps_the_exact_text(
    evil: PgJobStore, dsn: str, command: list[str]
) -> None:
    done = await asyncio.to_thread(pqrun_cmd, *command, "--json", "--dsn", dsn)
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout  # JSON escapes it: \u001b
    assert EVIL in strings(json.loads(done.stdout))


def strings(value: object) -> list[str]:
    """Every string in a JSON document, at any depth."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [text for item in value for text in strings(item)]
    return []


def test_the_last_error_keeps_its_lines_in_jobs_show(evil: PgJobStore, dsn: str) -> None:
    done = pqrun_cmd("jobs", "show", "1", "--dsn", dsn)
    assert "    Boom\\x1b]0;pwned\\x07\n    second line\\x1b[31m\n" in done.stdout


def test_top_shows_control_characters_escaped() -> None:
    counts = {s: {"count": 0, "exact": True} for s in ("READY", "RUNNING", "DONE")}
    rate = {"count": 0, "per_second": 0.0, "exact": True}
    status = {
        "schema": "public\x1b[2J",
        "now": datetime.now(UTC).isoformat(),
        "counts": counts,
        "by_type": [{"job_type": EVIL, "ready": 1, "due": 1, "running": 0}],
        "oldest_due_seconds": None,
        "throughput": {
            s: {"last_minute": rate, "last_hour": rate} for s in ("DONE", "FAILED")
        },
        "workers": [
            {"worker_id": EVIL, "concurrency": 1, "heartbeat_age_seconds": 1.0,
             "job_types": [EVIL]},
        ],
    }  # fmt: skip
    failures = [
        {"id": 1, "job_type": EVIL, "finished_at": datetime.now(UTC), "attempts": 1,
         "max_attempts": 1, "error": "x\x1b[31m\x00"},
    ]  # fmt: skip
    lines = render(status, failures, error=f"DatabaseUnavailable: {EVIL}")
    assert all(no_control(line) for line in lines), lines
    assert any(EVIL_SHOWN in line for line in lines)
    assert all("\n" not in line for line in lines)
