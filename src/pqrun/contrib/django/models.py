"""Django models of pqrun's tables, for reading them (the admin, your own queries).

They are unmanaged (``managed = False``): ddl.sql makes and upgrades the tables, through
this app's migrations or ``manage.py pqrun setup``; Django never alters them. Jobs are
moved by pqrun's guarded statements only: save or delete none through these models, use
``PgJobStore.cancel/retry/run_now`` or ``manage.py pqrun jobs retry|cancel``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import models

from pqrun.models import JobStatus

from .conf import table_name


class Job(models.Model):
    """A row of ``jobs`` (docs/state-machine.md describes its states and columns)."""

    id: models.BigAutoField[int, int] = models.BigAutoField(primary_key=True)
    job_type: models.TextField[str, str] = models.TextField()
    payload: models.JSONField[Any, Any] = models.JSONField(default=dict)
    status: models.TextField[str, str] = models.TextField(
        choices=[(s.value, s.value) for s in JobStatus], default="READY"
    )
    priority: models.IntegerField[int, int] = models.IntegerField(default=0)
    attempts: models.IntegerField[int, int] = models.IntegerField(default=0)
    max_attempts: models.IntegerField[int, int] = models.IntegerField(default=5)
    run_after: models.DateTimeField[datetime, datetime] = models.DateTimeField()
    timeout_seconds: models.IntegerField[int | None, int | None] = models.IntegerField(null=True)
    locked_at: models.DateTimeField[datetime | None, datetime | None] = models.DateTimeField(
        null=True
    )
    locked_by: models.TextField[str | None, str | None] = models.TextField(null=True)
    lease_id: models.BigIntegerField[int | None, int | None] = models.BigIntegerField(null=True)
    heartbeat_at: models.DateTimeField[datetime | None, datetime | None] = models.DateTimeField(
        null=True
    )
    dedupe_key: models.TextField[str | None, str | None] = models.TextField(null=True)
    concurrency_key: models.TextField[str | None, str | None] = models.TextField(null=True)
    awaited: models.BooleanField[bool, bool] = models.BooleanField(default=False)
    last_error: models.TextField[str | None, str | None] = models.TextField(null=True)
    error_history: models.JSONField[Any, Any] = models.JSONField(null=True)
    finished_at: models.DateTimeField[datetime | None, datetime | None] = models.DateTimeField(
        null=True
    )
    duration_ms: models.IntegerField[int | None, int | None] = models.IntegerField(null=True)
    result: models.JSONField[Any, Any] = models.JSONField(null=True)
    created_at: models.DateTimeField[datetime, datetime] = models.DateTimeField()
    updated_at: models.DateTimeField[datetime, datetime] = models.DateTimeField()
    trace_context: models.TextField[str | None, str | None] = models.TextField(null=True)

    class Meta:
        managed = False
        db_table = table_name("jobs")
        ordering = ("-id",)
        # Read-only: Django makes no add, change or delete permission for it.
        default_permissions = ("view",)

    def __str__(self) -> str:
        return f"job {self.id} ({self.job_type}, {self.status})"
