"""The event loop a command runs on: asyncio's own, or uvloop when it is installed.

uvloop (``pip install 'pqrun[uvloop]'``) is a faster drop-in for asyncio's loop, by the
authors of asyncpg. On one worker process it cut the CPU per job of I/O-bound handlers by
about a quarter and brought their throughput closer to what the concurrency allows; for
handlers that never wait it neither helped nor hurt (docs/benchmarks.md). A worker
mounted in a web app runs on the server's loop instead (uvicorn picks uvloop itself when
it is installed).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from .command_support import CommandError

#: --loop: "auto" is uvloop when it is installed, else asyncio.
LOOPS = ("auto", "asyncio", "uvloop")

T = TypeVar("T")


def default_loop() -> str:
    """$PQRUN_LOOP, else auto."""
    return os.environ.get("PQRUN_LOOP") or "auto"


def add_loop_option(parser: argparse.ArgumentParser) -> None:
    """--loop, for the commands that run a worker."""
    parser.add_argument(
        "--loop",
        choices=LOOPS,
        default=default_loop(),
        help="the event loop: uvloop when installed (auto), or asyncio's own "
        "(default: $PQRUN_LOOP, else auto)",
    )


def _uvloop_problem() -> str | None:
    """Why uvloop cannot run here (None: it can)."""
    if importlib.util.find_spec("uvloop") is None:
        if sys.platform == "win32":
            return "uvloop does not run on Windows"
        return "uvloop is not installed; pip install 'pqrun[uvloop]'"
    try:
        import uvloop  # noqa: F401
    except ImportError as exc:  # installed for another Python, a broken install
        return f"uvloop is installed but cannot be imported ({exc})"
    return None


def chosen_loop(name: str) -> str:
    """asyncio or uvloop: what ``name`` (one of LOOPS) means on this machine. auto takes
    asyncio where uvloop cannot run; asking for uvloop there is an error."""
    if name not in LOOPS:
        raise CommandError(f"PQRUN_LOOP={name!r}: use {', '.join(LOOPS)}")
    if name == "asyncio":
        return name
    problem = _uvloop_problem()
    if name == "auto":
        return "asyncio" if problem else "uvloop"
    if problem:
        raise CommandError(f"--loop uvloop: {problem}; or use --loop asyncio")
    return name


def run_on(name: str, main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to its end on the loop ``name`` (one of LOOPS) stands for."""
    try:
        factory: Callable[[], asyncio.AbstractEventLoop] | None = None
        if chosen_loop(name) == "uvloop":
            import uvloop

            factory = uvloop.new_event_loop
        runner = asyncio.Runner(loop_factory=factory)
    except BaseException:
        main.close()  # never awaited: no warning about it
        raise
    with runner:
        return runner.run(main)
