"""The ``pqrun`` command (also ``python -m pqrun``).

One function per command (``cmd_<name>``, in ``pqrun._ui.process_commands`` and
``pqrun._ui.queue_commands``), each registered by ``build_parser()`` with
``set_defaults(run=...)``; a new command is a new function and one ``add_parser`` call.
Commands that use the database take ``--dsn`` (else ``$PQRUN_DSN``, else
``$DATABASE_URL``) and ``--schema`` (else ``$PQRUN_SCHEMA``). docs/cli.md shows each.
``pqrun completion bash|zsh`` prints a completion script made from this parser.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from datetime import timedelta

import asyncpg

from . import __version__
from ._localpg import NoPostgres
from ._store.secrets import redact_secrets
from ._store.session_settings import check_schema_name
from ._ui.command_support import (
    CommandError,
    job_id,
    json_value,
    parse_duration,
    port_number,
    positive_int,
    schema_name,
    seconds,
)
from ._ui.completion import SHELLS, script
from ._ui.event_loop import add_loop_option
from ._ui.formatting import printable
from ._ui.log_format import FORMATS
from ._ui.process_commands import (
    cmd_bench,
    cmd_check,
    cmd_dashboard,
    cmd_demo,
    cmd_setup,
    cmd_top,
    cmd_worker,
)
from ._ui.queue_commands import (
    cmd_jobs_cancel,
    cmd_jobs_enqueue,
    cmd_jobs_list,
    cmd_jobs_retry,
    cmd_jobs_show,
    cmd_pause,
    cmd_paused,
    cmd_prune,
    cmd_resume,
    cmd_schedules,
    cmd_status,
    cmd_workers,
)
from .errors import PqrunError
from .models import JobStatus


def database_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--dsn", help="PostgreSQL DSN (default: $PQRUN_DSN, then $DATABASE_URL)")
    parent.add_argument(
        "--schema",
        type=schema_name,
        default=None,
        help="the schema the queue lives in (default: $PQRUN_SCHEMA, else the search_path)",
    )
    return parent


def build_parser(prog: str = "pqrun") -> argparse.ArgumentParser:
    """The parser of every command; ``prog`` is the name usage messages give the
    command (``manage.py pqrun`` from Django)."""
    parser = argparse.ArgumentParser(prog=prog, description="PostgreSQL job queue.")
    parser.add_argument("--version", action="version", version=f"pqrun {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    db = database_options()

    setup = commands.add_parser(
        "setup", parents=[db], help="apply ddl.sql to the database (safe to repeat)"
    )
    setup.add_argument("--dry-run", action="store_true", help="print the SQL, apply nothing")
    setup.set_defaults(run=cmd_setup)

    check = commands.add_parser(
        "check", parents=[db], help="say whether the schema is present and current"
    )
    check.set_defaults(run=cmd_check)

    worker = commands.add_parser(
        "worker", parents=[db], help="run a worker process (stops gracefully on SIGTERM)"
    )
    worker.add_argument(
        "target",
        help="module:attribute, a handlers dict, a Worker, or a function store -> Worker",
    )
    worker.add_argument("--concurrency", type=positive_int, help="jobs run at once (handlers dict)")
    worker.add_argument("--job-types", help="comma-separated job types to run (handlers dict)")
    worker.add_argument("--worker-id", help="default: hostname-pid-xxxx (random)")
    worker.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="the least important log lines shown (info)",
    )
    worker.add_argument(
        "--log-format",
        choices=FORMATS,
        default=os.environ.get("PQRUN_LOG_FORMAT") or "plain",
        help="plain text, or one JSON object per line (default: $PQRUN_LOG_FORMAT, else plain)",
    )
    worker.add_argument(
        "--metrics-port",
        type=port_number,
        help="serve Prometheus metrics on this port (needs pqrun[metrics])",
    )
    add_loop_option(worker)
    worker.set_defaults(run=cmd_worker)

    status = commands.add_parser(
        "status", parents=[db], help="counts, oldest waiting job, throughput, workers"
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(run=cmd_status)

    jobs = commands.add_parser("jobs", help="list, show, retry and cancel jobs")
    job_commands = jobs.add_subparsers(dest="jobs_command", required=True, metavar="action")
    listing = job_commands.add_parser("list", parents=[db], help="the newest jobs first")
    listing.add_argument(
        "--status",
        type=str.upper,
        choices=[s.value for s in JobStatus],
        help="only jobs in this status (any case)",
    )
    listing.add_argument("--type", help="only this job type")
    listing.add_argument(
        "--limit", type=positive_int, default=20, help="at most this many jobs (20)"
    )
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(run=cmd_jobs_list)
    show = job_commands.add_parser("show", parents=[db], help="every column of one job")
    show.add_argument("id", type=job_id, help="the job's id")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(run=cmd_jobs_show)
    enqueue = job_commands.add_parser(
        "enqueue", parents=[db], help="add a job, as store.enqueue() does; prints its id"
    )
    enqueue.add_argument("job_type", help="the job type (a handler's name)")
    enqueue.add_argument(
        "--payload", type=json_value, default=None, help="the payload, as JSON (default: {})"
    )
    enqueue.add_argument(
        "--priority", type=int, default=0, help="higher runs first among due jobs (0)"
    )
    enqueue.add_argument(
        "--run-after",
        type=parse_duration,
        default=None,
        help="not before this long from now (e.g. 90s, 15m, 2h; default: now)",
    )
    enqueue.add_argument(
        "--dedupe-key", help="an active job with this key already: print its id instead"
    )
    enqueue.add_argument(
        "--max-attempts", type=positive_int, default=5, help="runs before it ends FAILED (5)"
    )
    enqueue.add_argument(
        "--timeout",
        type=parse_duration,
        default=None,
        help="each run's deadline (e.g. 30s; default: none)",
    )
    enqueue.add_argument("--json", action="store_true", help='print {"id": ...}')
    enqueue.set_defaults(run=cmd_jobs_enqueue)
    retry = job_commands.add_parser(
        "retry", parents=[db], help="FAILED/CANCELLED -> READY: one job, or --failed"
    )
    retry.add_argument("id", type=job_id, nargs="?", help="the job's id (or --failed)")
    retry.add_argument("--failed", action="store_true", help="every FAILED job")
    retry.add_argument("--type", help="with --failed: only this job type")
    retry.set_defaults(run=cmd_jobs_retry)
    cancel = job_commands.add_parser(
        "cancel", parents=[db], help="READY/RUNNING -> CANCELLED: one job, or --type"
    )
    cancel.add_argument("id", type=job_id, nargs="?", help="the job's id (or --type)")
    cancel.add_argument("--type", help="every READY or RUNNING job of this type")
    cancel.set_defaults(run=cmd_jobs_cancel)

    pause = commands.add_parser(
        "pause",
        parents=[db],
        help="stop every worker claiming a job type's jobs, until resumed (running ones finish)",
    )
    pause.add_argument("job_type", help="the job type to pause")
    pause.add_argument(
        "--reason", help="why, for whoever looks (shown by status, paused and the dashboard)"
    )
    pause.set_defaults(run=cmd_pause)
    resume = commands.add_parser(
        "resume", parents=[db], help="let the workers claim a paused job type's jobs again"
    )
    resume.add_argument("job_type", help="the paused job type")
    resume.set_defaults(run=cmd_resume)
    paused = commands.add_parser(
        "paused", parents=[db], help="the paused job types: since when, and why"
    )
    paused.add_argument("--json", action="store_true", help="machine-readable output")
    paused.set_defaults(run=cmd_paused)

    workers = commands.add_parser("workers", parents=[db], help="the registered workers")
    workers.add_argument("--json", action="store_true", help="machine-readable output")
    workers.set_defaults(run=cmd_workers)

    schedules = commands.add_parser(
        "schedules", parents=[db], help="the stored schedules: next and last run"
    )
    schedules.add_argument("--json", action="store_true", help="machine-readable output")
    schedules.set_defaults(run=cmd_schedules)

    board = commands.add_parser(
        "dashboard",
        parents=[db],
        help="serve the web dashboard (read-only unless --allow-actions)",
    )
    board.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    board.add_argument("--port", type=port_number, default=8080, help="port to listen on (8080)")
    board.add_argument(
        "--allow-actions",
        action="store_true",
        help="allow retry, cancel and pause from the dashboard (it has no login: keep it private)",
    )
    board.set_defaults(run=cmd_dashboard)

    prune = commands.add_parser(
        "prune", parents=[db], help="delete finished jobs past their retention, in batches"
    )
    prune.add_argument(
        "--keep-done",
        type=parse_duration,
        default=timedelta(days=1),
        help="keep DONE jobs this long after they finished (1d)",
    )
    prune.add_argument(
        "--keep-failed",
        type=parse_duration,
        default=timedelta(days=7),
        help="keep FAILED and CANCELLED jobs this long after they ended (7d)",
    )
    prune.add_argument("--keep-done-forever", action="store_true", help="delete no DONE job")
    prune.add_argument(
        "--keep-failed-forever", action="store_true", help="delete no FAILED or CANCELLED job"
    )
    prune.add_argument(
        "--batch-size",
        type=positive_int,
        default=1000,
        help="jobs deleted per statement (1000): short locks, short transactions",
    )
    prune.set_defaults(run=cmd_prune)

    top = commands.add_parser(
        "top", parents=[db], help="a live view of queues, rates, workers, failures (q quits)"
    )
    top.add_argument("--interval", type=seconds, default=1.0, help="seconds between refreshes")
    top.set_defaults(run=cmd_top)

    demo = commands.add_parser(
        "demo", help="enqueue and run a few jobs on a local or private PostgreSQL"
    )
    demo.set_defaults(run=cmd_demo)

    from ._bench import parser as bench_parser

    bench = commands.add_parser(
        "bench",
        parents=[bench_parser()],
        add_help=False,
        help="measure drain, continuous, latency, bulk enqueue and big-table claims",
    )
    add_loop_option(bench)
    bench.set_defaults(run=cmd_bench)

    completion = commands.add_parser(
        "completion", help="print a bash or zsh completion script (see docs/cli.md)"
    )
    completion.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    completion.set_defaults(run=lambda args: print_completion(parser, args.shell))
    return parser


def print_completion(parser: argparse.ArgumentParser, shell: str) -> int:
    """``pqrun completion SHELL``: the script, made from this very parser."""
    sys.stdout.write(script(parser, shell))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pqrun`` with ``argv`` (default: the process's arguments); return the exit
    code: 0 done, 1 refused or failed (said on stderr), 2 a bad $PQRUN_SCHEMA, 130 on
    Ctrl-C. A usage error exits 2 from argparse."""
    return run_command(build_parser().parse_args(argv))


def run_command(args: argparse.Namespace) -> int:
    """Run the command ``args`` were parsed for (``args.run``); return the exit code as
    ``main`` does, errors said on stderr without passwords."""
    from_environment = os.environ.get("PQRUN_SCHEMA")
    if from_environment:
        try:
            check_schema_name(from_environment)
        except ValueError as exc:
            print(f"pqrun: PQRUN_SCHEMA: {exc}", file=sys.stderr)
            return 2
    try:
        code: int = args.run(args)
    except (CommandError, PqrunError, NoPostgres) as exc:
        report_error(args, str(exc))
        return 1
    except asyncpg.PostgresError as exc:
        # A refusal by the server (permissions, a lock timeout): its words, no traceback.
        report_error(args, f"PostgreSQL said: {type(exc).__name__}: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`pqrun status --json | head`): nothing more to say.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stays open until exit
        return 1
    except OSError as exc:
        # The system refused something the command asked for: a port in use, say.
        report_error(args, str(exc))
        return 1
    return code


def report_error(args: argparse.Namespace, text: str) -> None:
    """Print ``pqrun: text`` to stderr, safe to show: the text may quote a driver, the
    OS or the database, so it loses the passwords of every DSN the command could have
    used (--dsn, $PQRUN_DSN, $DATABASE_URL) and shows control characters escaped."""
    for dsn in (
        getattr(args, "dsn", None),
        os.environ.get("PQRUN_DSN"),
        os.environ.get("DATABASE_URL"),
    ):
        if dsn:
            text = redact_secrets(text, dsn)
    print(f"pqrun: {printable(text, multiline=True)}", file=sys.stderr)
