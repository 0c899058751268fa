"""The dashboard's page of one job: every column, the payload, the result, the last
error and the errors of earlier attempts, with retry, cancel and (a job due later) run
now when actions are allowed."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from pqrun._ui.web_html import (
    age_text,
    badge_html,
    h,
    job_link,
    ms_text,
    refuse,
    table_html,
    type_link,
    when_html,
)
from pqrun._ui.web_jobs import MAX_ID
from pqrun._ui.web_page import DashboardPage
from pqrun.errors import JobConflict
from pqrun.models import AttemptError, Job, JobStatus

#: What a RUNNING job's worker said of it in its last heartbeat.
RUN_STATES = {
    "started": ' <span id="run-state">handler running</span>',
    "waiting": ' <span id="run-state">claimed, waiting for a free slot in its worker</span>',
}
#: Payload and result are cut to this many characters on the job page.
SHOW_JSON_LIMIT = 100_000


class JobPage(DashboardPage):
    """``/jobs/{id}``, its live fragment, and its retry, cancel and run-now POSTs."""

    def job_fragment(
        self,
        request: Request,
        job: Job,
        history: list[AttemptError],
        run_state: str | None,
        related: dict[str, list[dict[str, Any]]],
    ) -> str:
        base = self.base(request)
        actions = ""
        if job.status in (JobStatus.FAILED, JobStatus.CANCELLED):
            actions += self.action_button(request, f"/jobs/{job.id}/retry", "Retry")
        if job.status in (JobStatus.READY, JobStatus.RUNNING):
            actions += self.action_button(request, f"/jobs/{job.id}/cancel", "Cancel")
        if job.status is JobStatus.READY and job.run_after > datetime.now(UTC):
            actions += self.action_button(request, f"/jobs/{job.id}/run-now", "Run now")
        waited = (
            age_text((job.locked_at - job.run_after).total_seconds())
            if job.locked_at is not None and job.locked_at >= job.run_after
            else "-"
        )
        facts = [
            ("status", badge_html(job.status.value) + RUN_STATES.get(run_state or "", "")),
            ("job type", type_link(base, job.job_type)),
            ("attempts", f"{h(job.attempts)} of {h(job.max_attempts)}"),
            ("priority", h(job.priority)),
            ("dedupe key", h(job.dedupe_key or "-")),
            ("timeout", h(f"{job.timeout_seconds} s" if job.timeout_seconds else "none")),
            ("created", when_html(job.created_at, absolute=True)),
            ("due", when_html(job.run_after, absolute=True)),
            ("claimed", when_html(job.locked_at, absolute=True)),
            ("waited for a worker", h(waited)),
            ("worker", h(job.locked_by or "-")),
            ("finished", when_html(job.finished_at, absolute=True)),
            ("took", h(ms_text(job.duration_ms))),
            ("updated", when_html(job.updated_at, absolute=True)),
            ("trace", h(job.trace_context or "-")),
        ]
        listing = "".join(f"<dt>{h(name)}</dt><dd>{value}</dd>" for name, value in facts)
        earlier = " (of an earlier attempt)" if job.status is JobStatus.DONE else ""
        error = (
            (
                f'<h2>Last error{earlier}</h2><pre class="err" id="last-error">'
                f"{h(job.last_error)}</pre>"
                if job.last_error
                else ""
            )
            + attempts_html(history)
            + related_html(base, related)
        )
        return (
            f'<p id="actions">{actions}</p><dl id="facts" data-status="{h(job.status.value)}">'
            f"{listing}</dl>"
            f'<h2>Payload</h2><pre id="payload">{h(json_text(job.payload))}</pre>'
            f'<h2>Result</h2><pre id="result">{h(json_text(job.result))}</pre>{error}'
            f'<p><a href="{h(base)}/jobs?{h(urlencode({"job_type": job.job_type}))}">'
            f"More {h(job.job_type)} jobs</a></p>"
        )

    async def get_job(self, request: Request) -> Job | None:
        try:
            job_id = int(request.path_params["job_id"])
        except ValueError:
            return None
        if not 0 < job_id <= MAX_ID:
            return None
        return await self.store.get_job(job_id)

    async def route_job(self, request: Request) -> Response:
        job = await self.get_job(request)
        if job is None:
            return refuse(404, "No such job.")
        live = f"{self.base(request)}/_/jobs/{job.id}"
        fragment = self.job_fragment(
            request,
            job,
            await self.store.error_history(job.id),
            await self.store.run_state(job),
            await self.store.dependencies(job.id),
        )
        return self.page(
            request,
            f"Job {job.id}",
            f'<h2>Job {h(job.id)}</h2><div id="job" data-live="{h(live)}">{fragment}</div>',
        )

    async def route_job_fragment(self, request: Request) -> Response:
        job = await self.get_job(request)
        if job is None:
            return refuse(404, "No such job.")
        history = await self.store.error_history(job.id)
        run_state = await self.store.run_state(job)
        related = await self.store.dependencies(job.id)
        return self.fragment(request, self.job_fragment(request, job, history, run_state, related))

    async def route_retry(self, request: Request) -> Response:
        refused = await self.check_action(request)
        if refused is not None:
            return refused
        job = await self.get_job(request)
        if job is None:
            return refuse(404, "No such job.")
        try:
            notice = "retried" if await self.store.retry(job.id) else "not-retried"
        except JobConflict:
            notice = "conflict"
        return self.after_action(request, f"/jobs/{job.id}", notice)

    async def route_cancel(self, request: Request) -> Response:
        return await self.move(request, self.store.cancel, "cancelled")

    async def route_run_now(self, request: Request) -> Response:
        return await self.move(request, self.store.run_now, "ran-now")

    async def move(
        self, request: Request, make: Callable[[int], Awaitable[bool]], done: str
    ) -> Response:
        """A POST that makes one move of the job: its notice says whether it moved."""
        refused = await self.check_action(request)
        if refused is not None:
            return refused
        job = await self.get_job(request)
        if job is None:
            return refuse(404, "No such job.")
        notice = done if await make(job.id) else f"not-{done}"
        return self.after_action(request, f"/jobs/{job.id}", notice)


def attempts_html(history: list[AttemptError]) -> str:
    """The errors of the job's last attempts, newest first ("" when none failed)."""
    if not history:
        return ""
    rows = (
        f'<tr><td class="num">{h(entry.attempt)}</td>'
        f"<td>{when_html(entry.at, absolute=True)}</td><td>{h(entry.worker or '-')}</td>"
        f'<td>{h(entry.outcome)}</td><td><pre class="err">{h(entry.error)}</pre></td></tr>'
        for entry in reversed(history)
    )
    table = table_html(("#attempt", "when", "worker", "outcome", "error"), rows, "")
    return f'<h2>Errors by attempt</h2><div class="scroll" id="attempts">{table}</div>'


def related_html(base: str, related: dict[str, list[dict[str, Any]]]) -> str:
    """The jobs this one depends on, and the newest that depend on it ("" for none)."""
    parts = []
    for key, title in (
        ("dependencies", "Depends on"),
        ("dependents", "Jobs that depend on it (the newest 100)"),
    ):
        jobs = related.get(key) or []
        if not jobs:
            continue
        rows = (
            f"<tr><td>{job_link(base, j['id'])}</td><td>{type_link(base, j['job_type'])}</td>"
            f"<td>{badge_html(j['status'])}</td></tr>"
            for j in jobs
        )
        table = table_html(("id", "type", "status"), rows, "")
        parts.append(f'<h2>{h(title)}</h2><div class="scroll" id="{key}">{table}</div>')
    return "".join(parts)


def json_text(value: Any) -> str:
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    if len(text) > SHOW_JSON_LIMIT:
        return text[:SHOW_JSON_LIMIT] + f"\n... ({len(text):,} characters in all)"
    return text
