"""The ``pqrun`` command (also ``python -m pqrun``).

One function per command (``cmd_<name>``), each registered by ``build_parser()`` with
``set_defaults(run=...)``; a new command is a new function and one ``add_parser`` call.
Commands that use the database take ``--dsn`` (else ``$PQRUN_DSN``, else
``$DATABASE_URL``) and ``--schema`` (else ``$PQRUN_SCHEMA``). docs/cli.md shows each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import os
import re
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import asyncpg

from ._ui.formatting import count_text, duration_text, printable
from .errors import PqrunError
from .localpg import NoPostgres
from .models import Job, JobStatus
from .schema import ddl_sql
from .store import PgJobStore, check_schema_name, quote_ident, redact_secrets

T = TypeVar("T")


class CommandError(Exception):
    """A mistake in how a command was called, or a state it cannot act on: exit 1."""


# -- shared ---------------------------------------------------------------------------


def resolve_dsn(given: str | None) -> str:
    """--dsn, then $PQRUN_DSN, then $DATABASE_URL."""
    dsn = given or os.environ.get("PQRUN_DSN") or os.environ.get("DATABASE_URL")
    if not dsn:
        raise CommandError(
            "no database given: pass --dsn postgresql://user@host/db, "
            "or set PQRUN_DSN or DATABASE_URL"
        )
    return dsn


def open_store(args: argparse.Namespace) -> PgJobStore:
    """A store for the command's --dsn and --schema (not connected yet); without
    --schema, the store reads $PQRUN_SCHEMA as PgJobStore() does in your app."""
    return PgJobStore(resolve_dsn(args.dsn), schema=args.schema, min_size=1, max_size=2)


def with_store(args: argparse.Namespace, action: Callable[[PgJobStore], Awaitable[T]]) -> T:
    """Run ``action(store)`` on a started store, and close the store after."""

    async def run() -> T:
        store = open_store(args)
        try:
            await store.start()
            return await action(store)
        finally:
            await store.close()

    return asyncio.run(run())


DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """``90``, ``90s``, ``15m``, ``12h``, ``7d``."""
    match = DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration; use seconds or a number with s, m, h or d (e.g. 7d)"
        )
    return timedelta(seconds=float(match[1]) * UNIT_SECONDS[match[2]])


def schema_name(text: str) -> str:
    try:
        return check_schema_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def to_json(value: Any) -> str:
    def default(item: Any) -> Any:
        if isinstance(item, datetime):
            return item.isoformat()
        if isinstance(item, timedelta):
            return item.total_seconds()
        raise TypeError(f"{type(item).__name__} is not JSON")

    return json.dumps(value, default=default, indent=2)


def job_dict(job: Job) -> dict[str, Any]:
    return {name: getattr(job, name) for name in Job.__dataclass_fields__}


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 2**31 - 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number from 1 to 2147483647")
    return value


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: give a port from 0 to 65535")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0.05 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r}: give from 0.05 to 3600 seconds")
    return value


def job_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a job id (a whole number)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a job id (ids start at 1)")
    return value


# -- setup and check --------------------------------------------------------------------


def cmd_setup(args: argparse.Namespace) -> int:
    if args.dry_run:
        schema = args.schema or os.environ.get("PQRUN_SCHEMA") or None
        if schema is not None:
            quoted = quote_ident(check_schema_name(schema))
            sys.stdout.write(
                f"CREATE SCHEMA IF NOT EXISTS {quoted};\nSET search_path TO {quoted};\n\n"
            )
        sys.stdout.write(ddl_sql())
        return 0

    async def setup() -> None:
        store = open_store(args)
        try:
            await store.setup()
        finally:
            await store.close()

    asyncio.run(setup())
    schema = args.schema or os.environ.get("PQRUN_SCHEMA")
    where = f" in schema {schema}" if schema else ""
    print(f"pqrun: schema applied{where}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    async def check(store: PgJobStore) -> tuple[str, list[str]]:
        return store.schema or store.channel.removeprefix("pqrun:"), await store.check_schema()

    schema, missing = with_store(args, check)
    option = f" --schema {args.schema}" if args.schema else ""
    if missing:
        print(
            f"pqrun: the schema in {schema!r} is out of date; missing: {', '.join(missing)}. "
            f"Run `pqrun setup{option}` (safe to repeat) to add them",
            file=sys.stderr,
        )
        return 1
    print(f"pqrun: the schema in {schema!r} is present and current")
    return 0


# -- worker ---------------------------------------------------------------------------


def load_target(spec: str) -> Any:
    """``package.module:attribute`` -> the attribute, importing from the current directory."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise CommandError(
            f"{spec!r}: name a module attribute as module:attribute, e.g. myapp.jobs:handlers"
        )
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would, so ./myapp is found
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise CommandError(
                f"cannot import {module_name!r} ({exc}); run from the directory that holds "
                "it, or add that directory to PYTHONPATH"
            ) from None
        raise  # a module their code imports is missing: the traceback helps
    value: Any = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise CommandError(f"{module_name!r} has no attribute {attribute!r}") from None
    return value


def cmd_worker(args: argparse.Namespace) -> int:
    from .worker import Worker

    target = load_target(args.target)
    job_types = (
        None if args.job_types is None else [t.strip() for t in args.job_types.split(",") if t]
    )
    worker: Worker
    if isinstance(target, Worker):
        if args.dsn or args.schema or args.concurrency or job_types or args.metrics_port:
            raise CommandError(
                f"{args.target} is a Worker with its own store and settings: drop --dsn, "
                "--schema, --concurrency, --job-types and --metrics-port, or point at a "
                "handlers dict"
            )
        worker = target
    elif isinstance(target, Mapping):
        handlers = dict(target)
        if job_types is not None:
            unknown = sorted(set(job_types) - set(handlers))
            if unknown:
                raise CommandError(
                    f"--job-types {', '.join(unknown)}: {args.target} has no handler for "
                    f"them (it has: {', '.join(sorted(handlers))})"
                )
            handlers = {name: handlers[name] for name in job_types}
        worker = Worker(
            store=open_store(args),
            handlers=handlers,
            concurrency=args.concurrency,
            worker_id=args.worker_id,
            metrics_port=args.metrics_port,
        )
    elif callable(target):
        if args.concurrency or job_types or args.metrics_port:
            raise CommandError(
                f"{args.target} is a factory: it sets concurrency, job types and the "
                "metrics port itself"
            )
        built = target(open_store(args))
        if not isinstance(built, Worker):
            raise CommandError(
                f"{args.target}(store) returned {built!r}; a worker factory must return a Worker"
            )
        worker = built
    else:
        raise CommandError(
            f"{args.target} is a {type(target).__name__}; point at a handlers dict "
            "({'job_type': handler}), a Worker, or a function store -> Worker"
        )
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )

    async def run() -> None:
        # Connect and check the schema first: a worker started against a wrong DSN or
        # an empty database says so and exits, instead of retrying for ever.
        await worker.store.start()
        try:
            await worker.run()  # SIGTERM/SIGINT: a graceful stop
        finally:
            await worker.store.close()

    asyncio.run(run())
    return 0


# -- status and listings --------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    status = with_store(args, lambda store: store.queue_status())
    if args.json:
        print(to_json(status))
        return 0
    print(format_status(status))
    return 0


def format_status(status: Mapping[str, Any]) -> str:
    lines = [f"pqrun status: schema {printable(status['schema'])}, at {status['now']}", ""]
    counts = status["counts"]
    oldest = status["oldest_due_seconds"]
    due = sum(t["due"] for t in status["by_type"])
    lines.append("jobs by status")
    for name, entry in counts.items():
        note = ""
        if name == "READY":
            at_least = "" if entry["exact"] else "at least "
            note = f"  ({at_least}{due:,} due now" + (
                f", the oldest waiting {duration_text(oldest, tenths=True)})"
                if oldest is not None
                else ")"
            )
        lines.append(f"  {name:<10} {count_text(entry):>12}{note}")
    if not all(entry["exact"] for entry in counts.values()):
        lines.append("  (~: the planner's estimate; >=: more than counted, no estimate yet)")
    lines += ["", "active jobs by type"]
    if status["by_type"]:
        lines.append(f"  {'job_type':<24} {'ready':>9} {'due':>9} {'running':>9}")
        for entry in status["by_type"]:
            lines.append(
                f"  {printable(entry['job_type']):<24} {entry['ready']:>9,} {entry['due']:>9,} "
                f"{entry['running']:>9,}"
            )
    else:
        lines.append("  (none)")
    lines += ["", f"  {'finished':<24} {'DONE':>12} {'FAILED':>12}"]
    for window, label in (("last_minute", "last minute"), ("last_hour", "last hour")):
        done = status["throughput"]["DONE"][window]
        failed = status["throughput"]["FAILED"][window]
        lines.append(
            f"  {label:<24} {rate_text(done):>12} {rate_text(failed):>12}"
            f"   ({done['per_second']:.1f}/s done)"
        )
    workers = status["workers"]
    lines += ["", f"workers alive: {len(workers)}"]
    for worker in workers:
        lines.append("  " + worker_line(worker))
    return "\n".join(lines)


def rate_text(entry: Mapping[str, Any]) -> str:
    return f"{entry['count']:,}" if entry["exact"] else f"~{entry['count']:,}"


def worker_line(worker: Mapping[str, Any]) -> str:
    types = printable(",".join(worker["job_types"])) or "-"
    return (
        f"{printable(worker['worker_id'])}  pid {worker['pid']} on {printable(worker['host'])}, "
        f"concurrency {worker['concurrency']}, types {types}, "
        f"heartbeat {duration_text(worker['heartbeat_age_seconds'], tenths=True)} ago"
    )


def cmd_workers(args: argparse.Namespace) -> int:
    status = with_store(args, lambda store: store.queue_status(count_cap=1, rate_cap=1))
    workers = status["workers"]
    if args.json:
        print(to_json(workers))
        return 0
    if not workers:
        print("no workers registered")
        return 0
    for worker in workers:
        print(worker_line(worker))
    return 0


def cmd_schedules(args: argparse.Namespace) -> int:
    schedules = with_store(args, lambda store: store.list_schedules())
    if args.json:
        print(to_json(schedules))
        return 0
    if not schedules:
        print("no schedules stored (a worker stores those it declares when it starts)")
        return 0
    for item in schedules:
        timing = printable(
            item["cron"] or f"every {duration_text(item['every_seconds'], tenths=True)}"
        )
        last = item["last_run_at"].isoformat() if item["last_run_at"] else "never"
        job = f" (job {item['last_job_id']})" if item["last_job_id"] else ""
        print(
            f"{printable(item['name'])}  {printable(item['job_type'])}  {timing} "
            f"{printable(item['timezone'])}  "
            f"next {item['next_run_at'].isoformat()}  last {last}{job}  "
            f"declared {item['declared_at'].isoformat()}"
        )
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .webui import dashboard
    except ImportError as exc:
        raise CommandError(
            f"pqrun dashboard needs the web extra ({exc}): pip install 'pqrun[web]'"
        ) from None
    # Say now, not at the first page view, that the database is unreachable or empty.
    with_store(args, lambda store: store.check_schema())
    store = open_store(args)
    app = dashboard(store, allow_actions=args.allow_actions)
    mode = "actions allowed" if args.allow_actions else "read-only"
    print(f"pqrun: dashboard ({mode}) on http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def cmd_jobs_list(args: argparse.Namespace) -> int:
    jobs = with_store(
        args,
        lambda store: store.list_jobs(status=args.status, job_type=args.type, limit=args.limit),
    )
    if args.json:
        print(to_json([job_dict(job) for job in jobs]))
        return 0
    if not jobs:
        print("no jobs")
        return 0
    print(f"{'id':>8}  {'job_type':<20} {'status':<9} {'attempts':>8}  {'run_after':<19}  error")
    for job in jobs:
        error = printable((job.last_error or "").split("\n", 1)[0])[:60]
        run_after = job.run_after.strftime("%Y-%m-%d %H:%M:%S")
        print(
            f"{job.id:>8}  {printable(job.job_type):<20} {job.status.value:<9} "
            f"{job.attempts:>4}/{job.max_attempts:<3}  {run_after:<19}  {error}"
        )
    return 0


def cmd_jobs_show(args: argparse.Namespace) -> int:
    job = with_store(args, lambda store: store.get_job(args.id))
    if job is None:
        raise CommandError(f"no job {args.id} (it may have been pruned)")
    fields = job_dict(job)
    if args.json:
        print(to_json(fields))
        return 0
    for name, value in fields.items():
        if name in ("payload", "result") and value is not None:
            value = json.dumps(value)
        if name == "last_error" and value:
            print(f"{name}:")
            for line in printable(value, multiline=True).splitlines():
                print(f"    {line}")
            continue
        print(f"{name + ':':<17}{printable(value) if value is not None else '-'}")
    return 0


def cmd_jobs_retry(args: argparse.Namespace) -> int:
    if (args.id is None) == (not args.failed):
        raise CommandError("give a job id, or --failed (optionally with --type), not both")
    if args.id is not None:
        if args.type:
            raise CommandError("--type goes with --failed, not with a job id")
        if not with_store(args, lambda store: store.retry(args.id)):
            raise CommandError(f"job {args.id} is not FAILED or CANCELLED (or does not exist)")
        print(f"job {args.id}: READY again")
        return 0
    retried, conflicts = with_store(args, lambda store: store.retry_failed(args.type))
    kind = f" {args.type}" if args.type else ""
    print(f"retried {len(retried)} FAILED{kind} jobs")
    if conflicts:
        print(
            f"left {len(conflicts)} FAILED: an active job holds their dedupe_key "
            f"(ids {', '.join(map(str, conflicts[:20]))}{', ...' if len(conflicts) > 20 else ''})",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    if not with_store(args, lambda store: store.cancel(args.id)):
        raise CommandError(f"job {args.id} is not READY or RUNNING (or does not exist)")
    print(f"job {args.id}: CANCELLED")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    pruned = with_store(
        args,
        lambda store: store.prune(
            None if args.keep_done_forever else args.keep_done,
            None if args.keep_failed_forever else args.keep_failed,
            batch_size=args.batch_size,
        ),
    )
    print(
        f"pruned {pruned.total:,} jobs: {pruned.done:,} DONE, {pruned.failed:,} FAILED, "
        f"{pruned.cancelled:,} CANCELLED"
    )
    if pruned.busy:
        print("stopped early: another process is pruning this queue right now", file=sys.stderr)
        return 1
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    from .top import run_top

    return run_top(open_store(args), interval=args.interval)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    logging.basicConfig(level=logging.WARNING, format="  (log) %(levelname)s %(message)s")
    asyncio.run(run_demo())
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run as run_bench

    asyncio.run(run_bench(args))
    return 0


# -- the parser -----------------------------------------------------------------------


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pqrun", description="PostgreSQL job queue.")
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
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    worker.add_argument(
        "--metrics-port",
        type=port_number,
        help="serve Prometheus metrics on this port (needs pqrun[metrics])",
    )
    worker.set_defaults(run=cmd_worker)

    status = commands.add_parser(
        "status", parents=[db], help="counts, oldest waiting job, throughput, workers"
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(run=cmd_status)

    jobs = commands.add_parser("jobs", help="list, show, retry and cancel jobs")
    job_commands = jobs.add_subparsers(dest="jobs_command", required=True, metavar="action")
    listing = job_commands.add_parser("list", parents=[db], help="the newest jobs first")
    listing.add_argument("--status", type=str.upper, choices=[s.value for s in JobStatus])
    listing.add_argument("--type", help="only this job type")
    listing.add_argument("--limit", type=positive_int, default=20)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=cmd_jobs_list)
    show = job_commands.add_parser("show", parents=[db], help="every column of one job")
    show.add_argument("id", type=job_id)
    show.add_argument("--json", action="store_true")
    show.set_defaults(run=cmd_jobs_show)
    retry = job_commands.add_parser(
        "retry", parents=[db], help="FAILED/CANCELLED -> READY: one job, or --failed"
    )
    retry.add_argument("id", type=job_id, nargs="?")
    retry.add_argument("--failed", action="store_true", help="every FAILED job")
    retry.add_argument("--type", help="with --failed: only this job type")
    retry.set_defaults(run=cmd_jobs_retry)
    cancel = job_commands.add_parser("cancel", parents=[db], help="READY/RUNNING -> CANCELLED")
    cancel.add_argument("id", type=job_id)
    cancel.set_defaults(run=cmd_jobs_cancel)

    workers = commands.add_parser("workers", parents=[db], help="the registered workers")
    workers.add_argument("--json", action="store_true")
    workers.set_defaults(run=cmd_workers)

    schedules = commands.add_parser(
        "schedules", parents=[db], help="the stored schedules: next and last run"
    )
    schedules.add_argument("--json", action="store_true")
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
        help="allow retry and cancel from the dashboard (it has no login: keep it private)",
    )
    board.set_defaults(run=cmd_dashboard)

    prune = commands.add_parser(
        "prune", parents=[db], help="delete finished jobs past their retention, in batches"
    )
    prune.add_argument("--keep-done", type=parse_duration, default=timedelta(days=1))
    prune.add_argument("--keep-failed", type=parse_duration, default=timedelta(days=7))
    prune.add_argument("--keep-done-forever", action="store_true")
    prune.add_argument("--keep-failed-forever", action="store_true")
    prune.add_argument("--batch-size", type=positive_int, default=1000)
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

    from .bench import parser as bench_parser

    bench = commands.add_parser(
        "bench",
        parents=[bench_parser()],
        add_help=False,
        help="measure drain, continuous, latency, bulk enqueue and big-table claims",
    )
    bench.set_defaults(run=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
