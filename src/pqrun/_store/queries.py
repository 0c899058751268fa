"""The named SQL statements of ``sql/*.sql``, read once at import.

Each file holds blocks that start with a line ``-- name: <name>``, then comment lines
(the move's purpose and ``Guard:``, the row state or owner the statement expects), then
the statement. ``query(name)`` returns the statement without its leading comments; an
unknown name raises KeyError when the module asking for it is imported, never later.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import resources

NAME_LINE = re.compile(r"^-- name: (?P<name>[a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
POSITIONAL = re.compile(r"\$(?P<number>\d+)")
# Any line that looks like a header: one NAME_LINE does not match is a typo, not SQL.
HEADER_LIKE = re.compile(r"^--\s*name\s*:", re.MULTILINE | re.IGNORECASE)


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
