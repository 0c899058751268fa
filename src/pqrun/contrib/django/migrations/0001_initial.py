"""Apply pqrun's ddl.sql, and record the unmanaged ``Job`` model in Django's state.

ddl.sql is idempotent and upgrades in place, so every later migration of this app that
comes with a change of ddl.sql runs the same ``apply_schema``; ``DDL_SHA256`` is the
ddl.sql this migration was written for (a test says when a new migration is due).
"""

from __future__ import annotations

import sys
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import migrations, models

from pqrun.contrib.django._sql import apply_schema
from pqrun.contrib.django.conf import pqrun_settings, table_name

DDL_SHA256 = "686a45a7f51872142e0323699884f9a5557f9ecd0547ead289bb569e7aa23a27"


def forwards(apps: Any, schema_editor: Any) -> None:
    # The queue lives in one database, PQRUN['DATABASE']: migrating any other (say a
    # SQLite default beside it) applies nothing there.
    connection = schema_editor.connection
    if connection.alias != pqrun_settings().database:
        return
    if connection.vendor != "postgresql":
        raise ImproperlyConfigured(
            f"PQRUN['DATABASE'] is {connection.alias!r}, a {connection.vendor} database: "
            "pqrun needs PostgreSQL"
        )
    apply_schema(connection)


def backwards(apps: Any, schema_editor: Any) -> None:
    # Never drop the queue's tables (and the jobs in them) on a migrate back.
    sys.stderr.write(
        "  pqrun: its tables and jobs are left in place; drop them yourself if you mean "
        "to (docs/django.md, 'Removing pqrun')\n"
    )


class Migration(migrations.Migration):
    initial = True
    dependencies = []

    operations = [
        migrations.RunPython(forwards, backwards, elidable=False),
        migrations.CreateModel(
            name="Job",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("job_type", models.TextField()),
                ("payload", models.JSONField(default=dict)),
                (
                    "status",
                    models.TextField(
                        choices=[
                            ("WAITING", "WAITING"),
                            ("READY", "READY"),
                            ("RUNNING", "RUNNING"),
                            ("DONE", "DONE"),
                            ("FAILED", "FAILED"),
                            ("CANCELLED", "CANCELLED"),
                        ],
                        default="READY",
                    ),
                ),
                ("priority", models.IntegerField(default=0)),
                ("attempts", models.IntegerField(default=0)),
                ("max_attempts", models.IntegerField(default=5)),
                ("run_after", models.DateTimeField()),
                ("timeout_seconds", models.IntegerField(null=True)),
                ("locked_at", models.DateTimeField(null=True)),
                ("locked_by", models.TextField(null=True)),
                ("lease_id", models.BigIntegerField(null=True)),
                ("heartbeat_at", models.DateTimeField(null=True)),
                ("dedupe_key", models.TextField(null=True)),
                ("concurrency_key", models.TextField(null=True)),
                ("awaited", models.BooleanField(default=False)),
                ("last_error", models.TextField(null=True)),
                ("error_history", models.JSONField(null=True)),
                ("finished_at", models.DateTimeField(null=True)),
                ("duration_ms", models.IntegerField(null=True)),
                ("result", models.JSONField(null=True)),
                ("created_at", models.DateTimeField()),
                ("updated_at", models.DateTimeField()),
                ("trace_context", models.TextField(null=True)),
            ],
            options={
                "managed": False,
                "db_table": table_name("jobs"),
                "ordering": ("-id",),
                "default_permissions": ("view",),
            },
        ),
    ]
