"""The named SQL statements of ``sql/*.sql``, read once at import.

Each file holds blocks that start with a line ``-- name: <name>``, then comment lines
(the move's purpose and ``Guard:``, the row state or owner the statement expects), then
the statement. ``query(name)`` returns the statement without its leading comments; an
unknown name raises KeyError when the module asking for it is imported, never later.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .connections import Connection

NAME_LINE = re.compile(r"^-- name: (?P<name>[a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
POSITIONAL = re.compile(r"\$(?P<number>\d+)")
# Any line that looks like a header: one NAME_LINE does not match is a typo, not SQL.
HEADER_LIKE = re.compile(r"^--\s*name\s*:", re.MULTILINE | re.IGNORECASE)
# pqrun's tables, as statements name them: bare (FROM jobs, UPDATE job_workers ...), and
# as a quoted name handed to a function (to_regclass('jobs')).
TABLES = "jobs|job_workers|job_schedules|job_rate_limits|job_type_minutes|job_type_pauses"
TABLE_NAME = re.compile(rf"(?<![\w.\"'])({TABLES})(?![\w\"'])")
TABLE_LITERAL = re.compile(rf"(to_regclass|pg_get_serial_sequence)\('({TABLES})'")


def parse(file_name: str, text: str) -> dict[str, str]:
    """The named statements of one ``.sql`` file; a malformed file is a ValueError."""
    statements: dict[str, str] = {}
    heads = list(NAME_LINE.finditer(text))
    if len(heads) != len(HEADER_LIKE.findall(text)):
        raise ValueError(f"{file_name}: a '-- name:' line is malformed (lowercase names)")
    preamble = text[: heads[0].start()] if heads else text
    if any(line.strip() and not line.startswith("--") for line in preamble.split("\n")):
        raise ValueError(f"{file_name}: SQL before the first '-- name:' line")
    for head, after in zip(heads, [*heads[1:], None], strict=True):
        name = head["name"]
        if name in statements:
            raise ValueError(f"{file_name}: query {name!r} is defined twice")
        block = text[head.end() : None if after is None else after.start()]
        lines = block.strip("\n").split("\n")
        while lines and lines[0].startswith("--"):
            lines.pop(0)
        statement = "\n".join(lines).strip()
        if not statement:
            raise ValueError(f"{file_name}: query {name!r} has no statement")
        statements[name] = statement + "\n"
    return statements


def _load() -> dict[str, str]:
    statements: dict[str, str] = {}
    for entry in sorted(resources.files("pqrun._store").joinpath("sql").iterdir(), key=str):
        if not entry.name.endswith(".sql"):
            continue
        found = parse(entry.name, entry.read_text(encoding="utf-8"))
        for name in found.keys() & statements.keys():
            raise ValueError(f"{entry.name}: query {name!r} is defined twice")
        statements.update(found)
    return statements


#: Every named statement, by name.
STATEMENTS: dict[str, str] = _load()


def query(name: str) -> str:
    """The statement named ``name`` (asyncpg form, ``$1`` parameters)."""
    try:
        return STATEMENTS[name]
    except KeyError:
        raise KeyError(f"no SQL statement named {name!r} in pqrun/_store/sql") from None


def dbapi_query(name: str, parameters: Sequence[str]) -> str:
    """The statement ``name`` for a DB-API driver (psycopg 2 or 3, Django): ``$n``
    becomes ``%(parameters[n - 1])s`` and a literal ``%`` is doubled."""
    statement = query(name).replace("%", "%%")

    def named(match: re.Match[str]) -> str:
        number = int(match["number"])
        if not 1 <= number <= len(parameters):
            raise ValueError(f"query {name!r} uses ${number}: name {number} parameters")
        return f"%({parameters[number - 1]})s"

    return POSITIONAL.sub(named, statement)


@functools.cache
def qualified(statement: str, schema: str) -> str:
    """``statement`` with pqrun's tables named in ``schema`` (a quoted identifier), so
    that it finds them whatever the connection's search_path: a store with ``schema=``
    runs its statements so, on its own connections, a caller's and a pooler's alike."""
    named = TABLE_LITERAL.sub(
        lambda m: f"{m[1]}('" + schema.replace("'", "''") + "." + m[2] + "'", statement
    )
    return TABLE_NAME.sub(lambda m: f"{schema}.{m[1]}", named)


def qualified_statements(schema: str) -> Mapping[str, str]:
    """Every named statement (asyncpg form) -> the same in ``schema``."""
    return {statement: qualified(statement, schema) for statement in STATEMENTS.values()}


# The connection methods whose first argument is a statement: Qualified rewrites it.
SENDS_A_STATEMENT = frozenset(
    {"fetch", "fetchrow", "fetchval", "execute", "executemany", "fetchmany", "prepare", "cursor"}
)


class Qualified:
    """A connection as a store with a ``schema`` runs its own statements on it: each of
    pqrun's named statements is sent in its schema-qualified form, anything else as it
    is. Everything else is the connection's own (``conn``)."""

    __slots__ = ("_statements", "conn")

    def __init__(self, conn: Connection, statements: Mapping[str, str]) -> None:
        self.conn = conn
        self._statements = statements

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.conn, name)
        if name not in SENDS_A_STATEMENT:
            return attribute
        statements = self._statements

        def send(query: str, *args: Any, **kwargs: Any) -> Any:
            return attribute(statements.get(query, query), *args, **kwargs)

        return send
