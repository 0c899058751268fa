"""pqrun's statements run on a Django connection (DB-API, in Django's transaction):
applying ddl.sql for a migration, and the job types the admin offers."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from pqrun._store.queries import dbapi_query, qualified
from pqrun._store.session_settings import quote_ident
from pqrun.schema import ddl_sql

from .conf import pqrun_settings

CREATE_SCHEMA = dbapi_query("create_schema", ["schema"])
CURRENT_SEARCH_PATH = dbapi_query("current_search_path", [])
SET_LOCAL = dbapi_query("set_local", ["names", "values"])
RECENT_JOB_TYPES = dbapi_query("recent_job_types", ["since", "limit"])


def ddl_sha256() -> str:
    """The SHA-256 of the packaged ddl.sql: the latest migration records the one it was
    written for, and a test says when ddl.sql changed without a migration to apply it."""
    return hashlib.sha256(ddl_sql().encode()).hexdigest()


def apply_schema(connection: Any) -> None:
    """Apply ddl.sql on a Django connection, in its transaction (safe to repeat).

    In ``PQRUN['SCHEMA']`` when set (created if missing), else in the first schema of
    the connection's search_path, as ``PgJobStore.setup()`` does.
    """
    schema = pqrun_settings().schema
    with connection.cursor() as cursor:
        if schema is None:
            cursor.execute(ddl_sql())
            return
        cursor.execute(CREATE_SCHEMA, {"schema": schema})
        cursor.execute(cursor.fetchone()[0])
        cursor.execute(CURRENT_SEARCH_PATH)
        previous = cursor.fetchone()[0]
        # Local to the transaction, and put back right after: what Django runs next in
        # it (recording the migration) must find its own tables again.
        cursor.execute(SET_LOCAL, {"names": ["search_path"], "values": [quote_ident(schema)]})
        cursor.execute(ddl_sql())
        cursor.execute(SET_LOCAL, {"names": ["search_path"], "values": [previous]})


def recent_job_types(connection: Any, since: datetime, limit: int) -> list[str]:
    """Job types seen by the workers since ``since`` and those of the schedules."""
    schema = pqrun_settings().schema
    statement = (
        RECENT_JOB_TYPES if schema is None else qualified(RECENT_JOB_TYPES, quote_ident(schema))
    )
    with connection.cursor() as cursor:
        cursor.execute(statement, {"since": since, "limit": limit})
        return [row[0] for row in cursor.fetchall()]
