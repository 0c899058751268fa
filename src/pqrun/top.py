"""``pqrun top``: a live view of the queue in the terminal (q or Ctrl-C quits).

The screen is redrawn every ``interval`` seconds from ``store.queue_status()`` and
``store.recent_failures()``, the same numbers ``pqrun status`` prints; ``render()``
builds its lines, so what it shows can be checked without a terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import curses
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ._ui.formatting import count_text, duration_text, printable
from .errors import PqrunError
from .store import PgJobStore

QUIT_KEYS = {ord("q"), ord("Q"), 27}  # 27: Escape
FAILURES_SHOWN = 8
# Rows counted per status, and recent completions read for a rate, per refresh.
TOP_COUNT_CAP = 10_000
TOP_RATE_CAP = 2_000


class NoTerminal(PqrunError):
    """``pqrun top`` was started without a terminal to draw on."""


def render(
    status: Mapping[str, Any] | None,
    failures: list[dict[str, Any]],
    *,
    error: str | None = None,
    interval: float = 1.0,
) -> list[str]:
    """The lines of one screen of ``pqrun top``: one line each, with the control
    characters of database text (job types, worker ids, errors) shown escaped."""
    lines = [f"pqrun top   refresh {interval:g}s   q quits"]
    if error is not None:
        lines.append(f"!! {printable(error)}")
    if status is None:
        return [*lines, "", "waiting for the database ..."]
    lines[0] = f"pqrun top   schema {printable(status['schema'])}   {status['now'][:19]}   q quits"
    oldest = status["oldest_due_seconds"]
    lines += ["", "JOBS"]
    for name, entry in status["counts"].items():
        note = ""
        if name == "READY" and oldest is not None:
            note = f"   oldest due waits {duration_text(oldest)}"
        lines.append(f"  {name:<10}{count_text(entry):>14}{note}")

    done = status["throughput"]["DONE"]
    failed = status["throughput"]["FAILED"]
    lines += [
        "",
        "RATES                 done/s    failed/s      done/hour",
        f"  last minute   {done['last_minute']['per_second']:>12.1f}"
        f"{failed['last_minute']['per_second']:>12.2f}"
        f"{count_text(done['last_hour']):>15}",
    ]

    lines += [
        "",
        f"QUEUES   {'job_type':<28}{'ready':>10}{'due':>10}{'running':>10}{'waiting':>10}",
    ]
    if not status["by_type"]:
        lines.append("  (no READY or RUNNING jobs)")
    for entry in status["by_type"]:
        lines.append(
            f"         {printable(entry['job_type']):<28}{entry['ready']:>10,}"
            f"{entry['due']:>10,}"
            f"{entry['running']:>10,}{entry.get('waiting', 0):>10,}"
            f"{'  PAUSED' if entry.get('paused') else ''}"
        )
    paused = status.get("paused", [])
    if paused:
        lines += ["", f"PAUSED   {len(paused)} job types: no worker claims their jobs"]
        for pause in paused:
            reason = f"   {printable(pause['reason'])}" if pause.get("reason") else ""
            lines.append(
                f"  {printable(pause['job_type']):<30} since {pause['paused_at'][:19]}{reason}"
            )

    workers = status["workers"]
    lines += ["", f"WORKERS  {len(workers)} alive"]
    for worker in workers:
        lines.append(
            f"  {printable(worker['worker_id']):<30} "
            f"busy {worker.get('busy', 0)}/{worker['concurrency']:<4} "
            f"heartbeat {duration_text(worker['heartbeat_age_seconds'])} ago   "
            f"{printable(','.join(worker['job_types']))}"
        )

    lines += ["", "RECENT FAILURES"]
    if not failures:
        lines.append("  (none)")
    for failure in failures:
        finished: datetime = failure["finished_at"]
        lines.append(
            f"  {failure['id']:>8}  {printable(failure['job_type']):<20} {finished:%H:%M:%S}  "
            f"{failure['attempts']}/{failure['max_attempts']}  {printable(failure['error'] or '')}"
        )
    # Each field above is escaped where it is placed (so columns line up); this catches
    # whatever a change adds without, since curses would draw a newline or ESC as is.
    return [printable(line) for line in lines]


def _draw(screen: Any, lines: list[str]) -> None:
    screen.erase()
    height, width = screen.getmaxyx()
    for row, line in enumerate(lines[: max(height - 1, 0)]):
        with contextlib.suppress(curses.error):  # a terminal too small for this line
            screen.addnstr(row, 0, line, max(width - 1, 0))
    screen.refresh()


async def _snapshot(store: PgJobStore) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    # Lower bounds than `pqrun status`: this runs every second, and beyond them the
    # planner's estimates are good enough for a live view.
    status = await store.queue_status(count_cap=TOP_COUNT_CAP, rate_cap=TOP_RATE_CAP)
    return status, await store.recent_failures(FAILURES_SHOWN)


def run_top(store: PgJobStore, *, interval: float = 1.0) -> int:
    """Show the live view until q, Escape or Ctrl-C. Returns the exit code (0)."""
    if interval <= 0:
        raise ValueError("--interval must be more than 0 seconds")
    with asyncio.Runner() as runner:
        try:
            # The first look happens before the screen is taken over, so that a missing
            # database or schema is reported as a plain error.
            runner.run(store.start())
            first = runner.run(_snapshot(store))

            def loop(screen: Any) -> None:
                with contextlib.suppress(curses.error):
                    curses.curs_set(0)  # no cursor, where the terminal allows
                screen.timeout(int(interval * 1000))
                status, failures = first
                error: str | None = None
                while True:
                    _draw(screen, render(status, failures, error=error, interval=interval))
                    key = screen.getch()
                    if key in QUIT_KEYS:
                        return
                    try:
                        status, failures = runner.run(_snapshot(store))
                        error = None
                    except (PqrunError, OSError) as exc:
                        error = f"{type(exc).__name__}: {exc}"  # keep the last numbers

            try:
                curses.wrapper(loop)
            except curses.error as exc:
                raise NoTerminal(
                    f"pqrun top needs a terminal ({exc}); use `pqrun status` in scripts"
                ) from None
            except KeyboardInterrupt:
                pass  # Ctrl-C quits, as q does
        finally:
            runner.run(store.close())
    return 0
