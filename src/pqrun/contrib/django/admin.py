"""A read-only Django admin of pqrun's jobs: a list with filters by status and job
type and a search by id, job type or dedupe key; each job's page with its payload,
result and errors. Nothing is added, changed or deleted here: jobs move through pqrun
(``manage.py pqrun jobs retry|cancel``, ``PgJobStore.retry/cancel/run_now``).

Fit for a jobs table of millions of rows: no full count (the count stops at
``CappedPaginator.CAP``), no sorting by column, and the lists of a status go through
pqrun's partial indexes. A filter by job type alone, or a search by job type or dedupe
key, reads rows until it has a page of them (docs/django.md).
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.contrib import admin
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from pqrun.models import JobStatus

from ._sql import recent_job_types
from .conf import pqrun_settings
from .models import Job

# finished_at is set exactly when a job is DONE, FAILED or CANCELLED (ddl.sql): saying
# so lets PostgreSQL list those through the jobs_finished partial index.
FINISHED = {JobStatus.DONE.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value}
# Pieces of a job too big for a list of them: read on the job's own page only.
# URL lookups the change list accepts: its filters' own (any other reads the table).
ALLOWED_LOOKUPS = frozenset({"status", "job_type"})
HEAVY_COLUMNS = ("payload", "result", "error_history", "last_error", "trace_context")


class CappedPaginator(Paginator):  # type: ignore[type-arg]
    """Counts at most ``CAP`` rows, so that a page costs the same on a table of
    millions: past that, the list goes no further than page ``CAP / per_page``."""

    CAP = 10_000

    @cached_property
    def count(self) -> int:
        object_list: Any = self.object_list
        if isinstance(object_list, QuerySet):
            return int(object_list[: self.CAP].count())
        return min(len(object_list), self.CAP)


class StatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(status.value, status.value) for status in JobStatus]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value is None:
            return queryset
        if value in FINISHED:
            return queryset.filter(status=value, finished_at__isnull=False)
        return queryset.filter(status=value)


class JobTypeFilter(admin.SimpleListFilter):
    """The job types the workers ran in the last day, and those of the schedules (from
    ``job_type_minutes``: listing the types of the jobs table would read all of it).
    Any other type can still be given in the address, ``?job_type=...``."""

    title = "job type"
    parameter_name = "job_type"
    RECENT = timedelta(days=1)
    LIMIT = 200

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        connection = connections[pqrun_settings().database]
        types = recent_job_types(connection, timezone.now() - self.RECENT, self.LIMIT)
        value = self.value()
        if value and value not in types:
            types = sorted([*types, value])
        return [(name, name) for name in types]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset if value is None else queryset.filter(job_type=value)


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Jobs, newest first; read-only."""

    list_display = ("id", "job_type", "status", "attempts", "run_after", "finished_at")
    list_filter = (StatusFilter, JobTypeFilter)
    search_fields = ("id", "job_type", "dedupe_key")
    search_help_text = "A job's id (a number), or a job type or dedupe key (exact)"
    ordering = ("-id",)
    # Sorting a big table by another column would read and sort all of it.
    sortable_by = ()
    show_full_result_count = False
    paginator = CappedPaginator
    list_per_page = 50
    actions = None
    fields = (
        ("id", "job_type", "status"),
        ("attempts", "max_attempts", "priority"),
        ("run_after", "timeout_seconds", "created_at", "updated_at"),
        ("locked_by", "locked_at", "lease_id"),
        ("finished_at", "duration_ms"),
        ("dedupe_key", "concurrency_key", "trace_context"),
        "payload_json",
        "result_json",
        "last_error_text",
        "errors_of_attempts",
    )
    readonly_fields = tuple(
        name for row in fields for name in (row if isinstance(row, tuple) else (row,))
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        queryset = super().get_queryset(request).using(pqrun_settings().database)
        match = request.resolver_match
        if match is not None and match.url_name == "pqrun_job_changelist":
            return queryset.defer(*HEAVY_COLUMNS)
        return queryset

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        # Exact matches only: a LIKE could use no index at all. A number is a job's id
        # alone: OR-ed with the text columns, it would read the whole table for one row.
        term = search_term.strip()
        if not term:
            return queryset, False
        if term.isascii() and term.isdigit():  # ("²".isdigit() is true; int() refuses it)
            return queryset.filter(id=int(term) if int(term) < 2**63 else 0), False
        return queryset.filter(Q(job_type=term) | Q(dedupe_key=term)), False

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        # Only the filters the list offers, which the indexes serve: any other lookup in
        # the URL (payload__icontains=..., last_error__regex=...) would read the table.
        return lookup in ALLOWED_LOOKUPS

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="payload")
    def payload_json(self, job: Job) -> SafeString:
        return pretty_json(job.payload)

    @admin.display(description="result")
    def result_json(self, job: Job) -> SafeString:
        return pretty_json(job.result)

    @admin.display(description="last error")
    def last_error_text(self, job: Job) -> SafeString:
        return format_html("<pre>{}</pre>", job.last_error or "")

    @admin.display(description="errors of its attempts")
    def errors_of_attempts(self, job: Job) -> SafeString:
        history = job.error_history if isinstance(job.error_history, list) else []
        if not history:
            return format_html("{}", "none")
        return format_html_join(
            "",
            "<p>attempt {} at {} on {}: {}</p><pre>{}</pre>",
            (
                (
                    entry.get("attempt", "?"),
                    entry.get("at", "?"),
                    entry.get("worker", "?"),
                    entry.get("outcome", "?"),
                    entry.get("error", ""),
                )
                for entry in history
                if isinstance(entry, dict)
            ),
        )


def pretty_json(value: Any) -> SafeString:
    """A JSON value indented, escaped, in a <pre>."""
    if value is None:
        return format_html("{}", "null")
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)
    return format_html("<pre>{}</pre>", text)
