"""Settings of the test project: the database comes from $PQRUN_TEST_DJANGO_DSN."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote, urlsplit


def database(dsn: str, **extra: Any) -> dict[str, Any]:
    url = urlsplit(dsn)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(url.path.lstrip("/")),
        "USER": unquote(url.username or ""),
        "PASSWORD": unquote(url.password or ""),
        "HOST": url.hostname or "",
        "PORT": str(url.port or ""),
        **extra,
    }


DSN = os.environ["PQRUN_TEST_DJANGO_DSN"]
SECRET_KEY = "tests-only-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost"]
USE_TZ = True
ROOT_URLCONF = "tests.django_project.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "pqrun.contrib.django",
    "tests.django_project.shop",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
DATABASES = {
    "default": database(DSN),
    # The same server on a port where nothing listens, with a password to keep hidden.
    "unreachable": database(DSN, HOST="127.0.0.1", PORT="1", PASSWORD="hunter2-secret"),
}
if os.environ.get("PQRUN_TEST_DJANGO_SQLITE"):
    # The project's own data in SQLite, the queue in PostgreSQL beside it.
    DATABASES["queue"] = DATABASES["default"]
    DATABASES["default"] = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ["PQRUN_TEST_DJANGO_SQLITE"],
    }
PQRUN = {
    "DATABASE": "queue" if os.environ.get("PQRUN_TEST_DJANGO_SQLITE") else "default",
    "HANDLERS": "tests.django_project.shop.jobs.handlers",
    "JSON_ENCODER": "django.core.serializers.json.DjangoJSONEncoder",
    "SCHEMA": os.environ.get("PQRUN_TEST_DJANGO_SCHEMA") or None,
}
