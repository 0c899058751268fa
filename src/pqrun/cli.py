"""The ``pqrun`` command (also ``python -m pqrun``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from .errors import PqrunError
from .localpg import NoPostgres
from .schema import ddl_sql
from .store import PgJobStore


def _dsn(given: str | None) -> str:
    dsn = given or os.environ.get("PQRUN_DSN") or os.environ.get("DATABASE_URL")
    if not dsn:
        raise SystemExit(
            "pqrun: no database given: pass --dsn postgresql://user@host/db, "
            "or set PQRUN_DSN or DATABASE_URL"
        )
    return dsn


async def _setup(dsn: str) -> None:
    store = PgJobStore(dsn)
    try:
        await store.setup()
    finally:
        await store.close()


def _serve_dashboard(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .webui import dashboard
    except ImportError as exc:
        raise SystemExit(
            f"pqrun dashboard needs the web extra ({exc}): pip install 'pqrun[web]'"
        ) from exc
    store = PgJobStore(_dsn(args.dsn))
    app = dashboard(store, allow_actions=args.allow_actions)
    mode = "actions allowed" if args.allow_actions else "read-only"
    print(f"pqrun: dashboard ({mode}) on http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pqrun", description="PostgreSQL job queue.")
    commands = parser.add_subparsers(dest="command", required=True)
    setup = commands.add_parser("setup", help="apply ddl.sql to the database (safe to repeat)")
    setup.add_argument("--dsn", help="PostgreSQL DSN (default: $PQRUN_DSN, then $DATABASE_URL)")
    setup.add_argument("--dry-run", action="store_true", help="print the SQL, apply nothing")
    commands.add_parser("demo", help="enqueue and run a few jobs on a local or private PostgreSQL")
    from .bench import parser as bench_parser

    commands.add_parser(
        "bench",
        parents=[bench_parser()],
        add_help=False,
        help="measure drain, continuous, latency, bulk enqueue and big-table claims",
    )
    board = commands.add_parser(
        "dashboard", help="serve the web dashboard (read-only unless --allow-actions)"
    )
    board.add_argument("--dsn", help="PostgreSQL DSN (default: $PQRUN_DSN, then $DATABASE_URL)")
    board.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    board.add_argument("--port", type=int, default=8080, help="port to listen on (8080)")
    board.add_argument(
        "--allow-actions",
        action="store_true",
        help="allow retry and cancel from the dashboard (it has no login: keep it private)",
    )
    args = parser.parse_args(argv)

    try:
        if args.command == "setup":
            if args.dry_run:
                sys.stdout.write(ddl_sql())
                return 0
            asyncio.run(_setup(_dsn(args.dsn)))
            print("pqrun: schema applied")
            return 0
        if args.command == "dashboard":
            return _serve_dashboard(args)
        if args.command == "bench":
            from .bench import run as run_bench

            asyncio.run(run_bench(args))
            return 0
        from .demo import run_demo

        logging.basicConfig(level=logging.WARNING, format="  (log) %(levelname)s %(message)s")
        asyncio.run(run_demo())
        return 0
    except (PqrunError, NoPostgres) as exc:
        print(f"pqrun: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
