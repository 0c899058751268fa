"""What every ``pqrun`` command shares: the error that exits 1, the store it opens from
``--dsn``/``--schema``, the argument types of the parser, and the JSON it prints."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from pqrun._store.session_settings import check_schema_name
from pqrun.models import Job
from pqrun.store import PgJobStore

T = TypeVar("T")


class CommandError(Exception):
    """A mistake in how a command was called, or a state it cannot act on: exit 1."""


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
    --schema, the store reads $PQRUN_SCHEMA as PgJobStore() does in your app. (A caller
    such as Django's ``manage.py pqrun`` may set ``args.json_encoder``.)"""
    return PgJobStore(
        resolve_dsn(args.dsn),
        schema=args.schema,
        min_size=1,
        max_size=2,
        json_encoder=getattr(args, "json_encoder", None),
    )


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


def json_value(text: str) -> Any:
    """A JSON value given on the command line (``--payload '{"to": "a@b.c"}'``)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not JSON ({exc.msg} at character {exc.pos}); quote it for the "
            """shell, e.g. --payload '{"to": "a@example.com"}'"""
        ) from None


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
