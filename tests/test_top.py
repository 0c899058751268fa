"""`pqrun top` in a real terminal: tmux runs it, capture-pane reads the screen, keys quit it."""

from __future__ import annotations

import asyncio
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from pqrun import PgJobStore
from pqrun.top import render

from .test_cli_commands import FIXTURE_JOBS

TMUX = shutil.which("tmux")


class Terminal:
    """One tmux server of our own (its own socket), running one command in a pane."""

    def __init__(self) -> None:
        self.socket = f"pqrun-test-{secrets.token_hex(4)}"

    def tmux(self, *args: str) -> str:
        assert TMUX is not None
        done = subprocess.run(
            [TMUX, "-L", self.socket, *args], capture_output=True, text=True, timeout=30
        )
        return done.stdout

    def start(self, command: list[str]) -> None:
        line = f"{shlex.join(command)}; echo pqrun-exited-$?; sleep 600"
        self.tmux("new-session", "-d", "-s", "top", "-x", "140", "-y", "50", line)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "top")

    def wait_for(self, *texts: str, within: float = 60.0) -> str:
        """Poll the screen until every text is on it (generous: slow machines)."""
        deadline = time.monotonic() + within
        while True:
            shown = self.screen()
            if all(text in shown for text in texts):
                return shown
            if time.monotonic() > deadline:
                raise AssertionError(f"{texts} not on the screen within {within}s:\n{shown}")
            time.sleep(0.1)

    def close(self) -> None:
        socket_path = self.tmux("display-message", "-p", "#{socket_path}").strip()
        self.tmux("kill-server")
        if socket_path:
            Path(socket_path).unlink(missing_ok=True)


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    if TMUX is None:
        pytest.skip("tmux is not installed")
    term = Terminal()
    try:
        yield term
    finally:
        term.close()


@pytest.mark.parametrize("key", ["q", "C-c"])
async def test_top_shows_queues_workers_and_failures_and_quits_cleanly(
    store: PgJobStore, conn: asyncpg.Connection, dsn: str, terminal: Terminal, key: str
) -> None:
    await conn.execute(FIXTURE_JOBS)
    command = [sys.executable, "-m", "pqrun", "top", "--dsn", dsn, "--interval", "0.3"]
    await asyncio.to_thread(terminal.start, command)
    shown = await asyncio.to_thread(
        terminal.wait_for, "JOBS", "QUEUES", "WORKERS  1 alive", "RECENT FAILURES"
    )
    assert "ValueError: bad image" in shown
    assert "w-1" in shown
    # It refreshes: a job enqueued now shows up in the READY count and its queue.
    await store.enqueue("brand_new_type")
    await asyncio.to_thread(terminal.wait_for, "brand_new_type")
    await asyncio.to_thread(terminal.tmux, "send-keys", "-t", "top", key)
    after = await asyncio.to_thread(terminal.wait_for, "pqrun-exited-")
    assert "pqrun-exited-0" in after
    assert "Traceback" not in after


async def test_top_without_a_database_says_so_before_taking_the_screen(
    terminal: Terminal,
) -> None:
    command = [sys.executable, "-m", "pqrun", "top", "--dsn", "postgresql://u@127.0.0.1:1/x"]
    await asyncio.to_thread(terminal.start, command)
    shown = await asyncio.to_thread(terminal.wait_for, "pqrun-exited-")
    assert "pqrun-exited-1" in shown
    assert "cannot connect to PostgreSQL" in shown


def test_render_marks_estimates_and_lists_failures() -> None:
    status = {
        "schema": "billing",
        "now": "2026-01-01T12:00:00+00:00",
        "counts": {
            "READY": {"count": 5, "exact": True},
            "DONE": {"count": 250_000, "exact": False, "at_least": 100_000},
            "FAILED": {"count": None, "exact": False, "at_least": 100_000},
        },
        "by_type": [{"job_type": "email", "ready": 5, "due": 4, "running": 0}],
        "oldest_due_seconds": 125.0,
        "throughput": {
            "DONE": {
                "last_minute": {"count": 600, "per_second": 10.0, "exact": True},
                "last_hour": {"count": None, "at_least": 2_000, "per_second": 10.0, "exact": False},
            },
            "FAILED": {
                "last_minute": {"count": 0, "per_second": 0.0, "exact": True},
                "last_hour": {"count": 0, "per_second": 0.0, "exact": True},
            },
        },
        "workers": [],
    }
    failure = {
        "id": 7,
        "job_type": "email",
        "attempts": 5,
        "max_attempts": 5,
        "finished_at": datetime(2026, 1, 1, 11, 59, tzinfo=UTC),
        "error": "Fail: no address",
    }
    text = "\n".join(render(status, [failure]))
    assert "schema billing" in text
    assert "~250,000" in text
    assert ">=100,000" in text
    assert ">=2,000" in text  # done/hour: at least the newest counted, not extrapolated
    assert "oldest due waits 2m" in text
    assert "10.0" in text
    assert "WORKERS  0 alive" in text
    assert "7  email" in text
    assert "Fail: no address" in text
    assert "waiting for the database" in "\n".join(render(None, [], error="down"))
