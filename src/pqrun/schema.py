"""The packaged copy of ddl.sql."""

from __future__ import annotations

from importlib import resources


def ddl_sql() -> str:
    """Return the text of ddl.sql, the schema pqrun needs (safe to apply more than once)."""
    return resources.files("pqrun").joinpath("ddl.sql").read_text(encoding="utf-8")
