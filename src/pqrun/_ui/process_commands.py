"""The commands that set up the database or start something: ``setup``, ``check``,
``worker``, ``dashboard``, ``top``, ``demo`` and ``bench``."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

from pqrun._store.session_settings import check_schema_name, quote_ident
from pqrun.schema import ddl_sql
from pqrun.store import PgJobStore

from .command_support import CommandError, open_store, with_store
from .event_loop import chosen_loop, run_on
from .log_format import FORMATS, configure_logging


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
    return run_worker(args, load_target(args.target))


def run_worker(args: argparse.Namespace, target: Any) -> int:
    """Run a worker for ``target`` (what ``args.target`` names, loaded): a handlers
    dict, a Worker, or a function store -> Worker."""
    from pqrun.worker import Worker

    loop = chosen_loop(args.loop)  # a wrong --loop or PQRUN_LOOP says so before anything

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
    if args.log_format not in FORMATS:  # (from $PQRUN_LOG_FORMAT: argparse checks the flag)
        raise CommandError(f"PQRUN_LOG_FORMAT={args.log_format!r}: use {' or '.join(FORMATS)}")
    configure_logging(args.log_level, args.log_format)

    async def run() -> None:
        # Connect and check the schema first: a worker started against a wrong DSN or
        # an empty database says so and exits, instead of retrying for ever.
        await worker.store.start()
        try:
            await worker.run()  # SIGTERM/SIGINT: a graceful stop
        finally:
            await worker.store.close()

    logging.getLogger("pqrun").info("pqrun: the worker runs on the %s event loop", loop)
    run_on(loop, run())
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from pqrun.webui import dashboard
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


def cmd_top(args: argparse.Namespace) -> int:
    from pqrun.top import run_top

    return run_top(open_store(args), interval=args.interval)


def cmd_demo(args: argparse.Namespace) -> int:
    from pqrun._demo import run_demo

    logging.basicConfig(level=logging.WARNING, format="  (log) %(levelname)s %(message)s")
    asyncio.run(run_demo())
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from pqrun._bench import run as run_bench

    loop = chosen_loop(args.loop)
    print(f"event loop: {loop}", flush=True)
    run_on(loop, run_bench(args))
    return 0
