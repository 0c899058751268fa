"""pqrun's settings in a Django project: the ``PQRUN`` dict of settings.py, and the DSN
pqrun's own connections use, made from ``DATABASES``.

    PQRUN = {
        "DATABASE": "default",              # the DATABASES alias the queue lives in
        "SCHEMA": None,                     # as PgJobStore(schema=...); else $PQRUN_SCHEMA
        "HANDLERS": "myapp.jobs.handlers",  # what `manage.py pqrun worker` runs
        "JSON_ENCODER": None,               # e.g. "django.core.serializers.json.DjangoJSONEncoder"
    }

Every key is optional; docs/django.md describes each.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from pqrun._store.session_settings import check_schema_name

KEYS = ("DATABASE", "SCHEMA", "HANDLERS", "JSON_ENCODER")

# Connection options of DATABASES[...]["OPTIONS"] that asyncpg reads as libpq does.
LIBPQ_OPTIONS = frozenset(
    {
        "sslmode",
        "sslcert",
        "sslkey",
        "sslrootcert",
        "sslcrl",
        "sslpassword",
        "sslnegotiation",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
        "passfile",
        "target_session_attrs",
        "krbsrvname",
        "gsslib",
        "service",
        "application_name",
    }
)
# Options for Django or psycopg alone: they say nothing about where the server is.
DJANGO_ONLY_OPTIONS = frozenset(
    {
        "pool",
        "server_side_binding",
        "isolation_level",
        "assume_role",
        "cursor_factory",
        "connect_timeout",
        "client_encoding",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "prepare_threshold",
    }
)


@dataclass(frozen=True)
class PqrunSettings:
    """The ``PQRUN`` setting, checked; ``schema`` already falls back to $PQRUN_SCHEMA."""

    database: str = "default"
    schema: str | None = None
    handlers: str | None = None
    json_encoder: str | None = None

    def json_encoder_class(self) -> type[Any] | None:
        """The ``JSON_ENCODER`` class (a ``json.JSONEncoder``), imported; None if unset.

        The seam for a store's JSON encoder: a caller hands it on where pqrun takes one.
        """
        if self.json_encoder is None:
            return None
        try:
            found = import_string(self.json_encoder)
        except ImportError as exc:
            raise ImproperlyConfigured(f"PQRUN['JSON_ENCODER']: {exc}") from None
        if not isinstance(found, type):
            raise ImproperlyConfigured(
                f"PQRUN['JSON_ENCODER'] = {self.json_encoder!r} is not a class; name a "
                "json.JSONEncoder subclass, e.g. django.core.serializers.json.DjangoJSONEncoder"
            )
        return found


def pqrun_settings() -> PqrunSettings:
    """Read and check ``settings.PQRUN`` (a dict; absent means every default)."""
    given = getattr(settings, "PQRUN", None) or {}
    if not isinstance(given, dict):
        raise ImproperlyConfigured(f"PQRUN must be a dict of {', '.join(KEYS)}, got {given!r}")
    unknown = sorted(set(given) - set(KEYS))
    if unknown:
        raise ImproperlyConfigured(
            f"PQRUN has unknown keys {unknown}; the keys are {', '.join(KEYS)} (docs/django.md)"
        )
    for key in KEYS:
        if given.get(key) is not None and not isinstance(given[key], str):
            raise ImproperlyConfigured(f"PQRUN['{key}'] must be a string, got {given[key]!r}")
    schema = given.get("SCHEMA") or os.environ.get("PQRUN_SCHEMA") or None
    if schema is not None:
        try:
            check_schema_name(schema)
        except ValueError as exc:
            raise ImproperlyConfigured(f"PQRUN['SCHEMA'] (or $PQRUN_SCHEMA): {exc}") from None
    database = given.get("DATABASE") or "default"
    if database not in settings.DATABASES:
        raise ImproperlyConfigured(
            f"PQRUN['DATABASE'] = {database!r} is not in DATABASES "
            f"(it has: {', '.join(sorted(settings.DATABASES))})"
        )
    return PqrunSettings(
        database=database,
        schema=schema,
        handlers=given.get("HANDLERS") or None,
        json_encoder=given.get("JSON_ENCODER") or None,
    )


def table_name(table: str) -> str:
    """The ``db_table`` of one of pqrun's tables: in ``PQRUN['SCHEMA']`` when set (Django
    quotes ``schema"."table`` as ``"schema"."table"``), else found by the search_path."""
    schema = pqrun_settings().schema
    return table if schema is None else f'{schema}"."{table}'


def database_dsn(alias: str) -> str:
    """A DSN for asyncpg that reaches the database ``DATABASES[alias]`` does.

    It holds the password (when there is one): show it only through
    ``pqrun._store.secrets.redact_dsn``.
    """
    if alias not in settings.DATABASES:
        raise ImproperlyConfigured(
            f"database {alias!r} is not in DATABASES (it has: "
            f"{', '.join(sorted(settings.DATABASES))})"
        )
    config = settings.DATABASES[alias]
    engine = config.get("ENGINE", "")
    if "postgresql" not in engine and "postgis" not in engine:
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}] uses {engine!r}; pqrun needs PostgreSQL "
            "(django.db.backends.postgresql)"
        )
    options = dict(config.get("OPTIONS") or {})
    query: dict[str, str] = {}
    for key, value in options.items():
        if key in LIBPQ_OPTIONS:
            query[key] = str(value)
        elif key == "options":
            query.update(server_settings(alias, str(value)))
        elif key not in DJANGO_ONLY_OPTIONS:
            raise ImproperlyConfigured(
                f"DATABASES[{alias!r}]['OPTIONS'][{key!r}]: pqrun does not know how to "
                "connect with it; pass the pqrun command a --dsn of your own instead"
            )
    user = config.get("USER") or ""
    password = config.get("PASSWORD") or ""
    host = config.get("HOST") or ""
    port = str(config.get("PORT") or "")
    name = config.get("NAME") or ""
    if host.startswith("/"):
        # A Unix socket directory: a URL has no room for it in the host part.
        query["host"] = host
        host = ""
    elif ":" in host:
        host = f"[{host}]"  # an IPv6 address
    if not host and port:
        # No host (Django's default: the local socket) or a socket directory: a port in
        # the netloc would need a host beside it, so it goes in the query.
        query["port"] = port
        port = ""
    auth = quote(user, safe="")
    if password:
        auth += ":" + quote(password, safe="")
    netloc = (f"{auth}@" if auth else "") + host + (f":{port}" if port else "")
    suffix = f"?{urlencode(query)}" if query else ""
    return f"postgresql://{netloc}/{quote(name, safe='')}{suffix}"


def server_settings(alias: str, options: str) -> dict[str, str]:
    """libpq's ``options`` (``-c name=value ...``) as settings asyncpg sends at connect."""
    found: dict[str, str] = {}
    words = shlex.split(options)
    while words:
        word = words.pop(0)
        if word == "-c" and words:
            word = words.pop(0)
        elif word.startswith(("-c", "--")):
            word = word[2:]
        else:
            word = ""
        name, equals, value = word.partition("=")
        if not equals or not name:
            raise ImproperlyConfigured(
                f"DATABASES[{alias!r}]['OPTIONS']['options'] = {options!r}: pqrun reads only "
                "'-c name=value' settings there"
            )
        found[name.replace("-", "_")] = value
    return found
