"""``manage.py pqrun <command> ...``: pqrun's CLI (docs/cli.md) on a database of
``DATABASES`` (``PQRUN['DATABASE']``, else ``default``; ``--database`` picks another)
and in ``PQRUN['SCHEMA']``, with no DSN to write by hand.

``manage.py pqrun worker`` runs the handlers dict ``PQRUN['HANDLERS']`` names (or the
target given, as ``pqrun worker`` takes it), each plain handler wrapped by
``django_handler`` so that it may use the ORM.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.module_loading import import_string

from pqrun.cli import build_parser, run_command
from pqrun.contrib.django.conf import database_dsn, pqrun_settings
from pqrun.contrib.django.handlers import django_handlers

PROG = "manage.py pqrun"


class Command(BaseCommand):
    help = (
        "pqrun's commands (setup, check, worker, status, jobs, workers, schedules, prune, "
        "top, dashboard) on a database of DATABASES: `manage.py pqrun --help` lists them"
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--database",
            default=None,
            help="the DATABASES alias of the queue (default: PQRUN['DATABASE'], else default)",
        )
        parser.add_argument(
            "pqrun_args",
            nargs=argparse.REMAINDER,
            metavar="command ...",
            help="a pqrun command and its options, as docs/cli.md shows them",
        )

    def run_from_argv(self, argv: list[str]) -> None:
        # `manage.py pqrun [--help]` lists pqrun's commands, not only this wrapper's options.
        if argv[2:] in ([], ["--help"], ["-h"]):
            self.stdout.write(build_parser(PROG).format_help())
            self.stdout.write(
                "--database ALIAS (before or after the command): the DATABASES alias of the "
                "queue (default: PQRUN['DATABASE'], else default)"
            )
            return
        super().run_from_argv(argv)

    def handle(self, *args: Any, **options: Any) -> None:
        argv, alias = take_database(list(options["pqrun_args"]), options["database"])
        conf = pqrun_settings()
        dsn = database_dsn(alias or conf.database)
        parser = build_parser(PROG)
        if conf.handlers and argv[:1] == ["worker"] and not has_positional(parser, argv):
            argv.append(conf.handlers)
        parsed = parser.parse_args(argv)
        # PQRUN['JSON_ENCODER'] encodes what the command's store writes: payloads, and
        # a worker's results and schedules.
        parsed.json_encoder = conf.json_encoder_class()
        if parsed.command == "worker":
            parsed.run = run_django_worker
        environment = {"PQRUN_DSN": dsn, "PQRUN_SCHEMA": conf.schema}
        with (
            overridden(environment),
            contextlib.redirect_stdout(writer(self.stdout)),
            contextlib.redirect_stderr(writer(self.stderr)),
        ):
            code = run_command(parsed)
        if code:
            raise CommandError(f"pqrun {parsed.command} exited with code {code}", returncode=code)


def run_django_worker(args: argparse.Namespace) -> int:
    """``pqrun worker`` with a target written either way (``myapp.jobs.handlers`` as
    Django names things, or ``myapp.jobs:handlers``), plain handlers made ORM-safe."""
    from pqrun._ui.command_support import CommandError as PqrunCommandError
    from pqrun._ui.process_commands import load_target, run_worker

    if ":" in args.target:
        target = load_target(args.target)
    else:
        try:
            target = import_string(args.target)
        except ImportError as exc:
            raise PqrunCommandError(
                f"{args.target!r} (PQRUN['HANDLERS'] or the worker's target): {exc}"
            ) from None
    if isinstance(target, Mapping):
        target = django_handlers(target)
    return run_worker(args, target)


def take_database(argv: list[str], given: str | None) -> tuple[list[str], str | None]:
    """``--database ALIAS`` (or ``--database=ALIAS``) taken out of pqrun's arguments too:
    it may come after the command (``manage.py pqrun status --database other``)."""
    rest: list[str] = []
    words = iter(argv)
    for word in words:
        if word == "--":
            rest += [word, *words]
        elif word == "--database":
            given = next(words, None)
            if given is None:
                raise CommandError("--database needs an alias of DATABASES")
        elif word.startswith("--database="):
            given = word.partition("=")[2]
        else:
            rest.append(word)
    return rest, given


def has_positional(parser: argparse.ArgumentParser, argv: list[str]) -> bool:
    """Whether ``pqrun worker`` arguments ``argv[1:]`` name a target already."""
    worker = next(
        action.choices["worker"]
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    takes_value = {
        option
        for action in worker._actions
        if action.option_strings and action.nargs != 0
        for option in action.option_strings
    }
    words = iter(argv[1:])
    for word in words:
        if word == "--":
            return next(words, None) is not None
        if word in takes_value:
            next(words, None)
        elif not word.startswith("-"):
            return True
    return False


@contextlib.contextmanager
def overridden(environment: Mapping[str, str | None]) -> Iterator[None]:
    """``os.environ`` with these variables set (None: unset) for the block only.

    pqrun's commands read their DSN and schema from there when no --dsn or --schema is
    given, and leave passwords out of their messages for what is there.
    """
    saved = {name: os.environ.get(name) for name in environment}
    try:
        for name, value in environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def writer(wrapper: Any) -> Any:
    """The stream under Django's OutputWrapper (which would add a newline per write)."""
    stream = getattr(wrapper, "_out", None)
    return stream if stream is not None else sys.stdout
