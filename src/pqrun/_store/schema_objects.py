"""What ddl.sql creates, and what a schema in the database lacks of it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pqrun.models import JOB_COLUMNS

from .queries import query

SCHEMA_OBJECTS = query("schema_objects")
JOBS_SCHEMA = query("jobs_schema")
IDENTITY = query("store_identity")

# What ddl.sql creates, for check_schema(): the job's columns, and the flag of
# store.wait() that no Job carries, in the order ddl.sql's upgrades add them (so a
# message naming several missing columns names them in that order).
EXPECTED_COLUMNS = (
    *(column for column in JOB_COLUMNS if column != "trace_context"),
    "awaited",
    "trace_context",
    "error_history",
)
EXPECTED_INDEXES = (
    "jobs_pkey",
    "jobs_ready_pickup",
    "jobs_dedupe_active",
    "jobs_running",
    "jobs_finished",
)
EXPECTED_TRIGGERS = ("jobs_notify_inserted", "jobs_notify_finished")
EXPECTED_TABLES = (
    "job_workers",
    "job_rate_limits",
    "job_schedules",
    "job_type_minutes",
    "job_type_pauses",
)
EXPECTED_WORKER_COLUMNS = (
    "held_jobs",
    "held_leases",
    "instance",
    "alive_since",
    "stale_after",
    "wake_capacity",
    "started_jobs",
)


def missing_objects(row: Mapping[str, Any]) -> list[str]:
    """What ddl.sql creates and SCHEMA_OBJECTS did not find."""
    missing = [f"column jobs.{c}" for c in EXPECTED_COLUMNS if c not in row["columns"]]
    missing += [f"table {t}" for t in EXPECTED_TABLES if t not in row["tables"]]
    if "job_workers" in row["tables"]:
        # Without these a worker's heartbeat fails, and its jobs look abandoned.
        missing += [
            f"column job_workers.{c}"
            for c in EXPECTED_WORKER_COLUMNS
            if c not in row["worker_columns"]
        ]
    missing += [f"index {i}" for i in EXPECTED_INDEXES if i not in row["indexes"]]
    missing += [f"trigger {t}" for t in EXPECTED_TRIGGERS if t not in row["triggers"]]
    return missing
