"""The dashboard's list of jobs: filtered by status and type, newest first, paged by
id (a bounded walk of the primary key), with "retry all failed" of a type."""

from __future__ import annotations

import re
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from pqrun._ui.web_html import (
    STATUSES,
    badge_html,
    h,
    job_link,
    ms_text,
    path_segment,
    table_html,
    type_link,
    when_html,
)
from pqrun._ui.web_page import DashboardPage

PAGE_SIZE = 50
MAX_ID = 2**63 - 1
# The last column holds the error's headline.
JOB_COLUMNS = (
    "id",
    "type",
    "status",
    "#attempts",
    "#priority",
    "created",
    "due/ended",
    "#took",
    "",
)
#: Ids a list page looks through (a bounded walk of the primary key).
BROWSE_WINDOW = 50_000
#: READY and RUNNING jobs read (of each) for the job types the filter offers.
KNOWN_TYPES_ROWS = 10_000
#: How many failed jobs one "retry all failed" click moves.
RETRY_FAILED_LIMIT = 10_000
# Plain ASCII digits (str.isdigit() also takes "²", which int() refuses).
DIGITS = re.compile(r"[0-9]{1,19}")


class JobsListPage(DashboardPage):
    """``/jobs``, its live fragment ``/_/jobs``, and the POST that retries a type's
    failed jobs."""

    def list_filters(self, request: Request) -> tuple[str | None, str | None, int | None]:
        status = (request.query_params.get("status") or "").upper() or None
        if status is not None and status not in STATUSES:
            status = None  # jobs_page says so
        job_type = request.query_params.get("job_type") or None
        before_text = request.query_params.get("before", "")
        before = min(int(before_text), MAX_ID) if DIGITS.fullmatch(before_text) else None
        return status, job_type, before

    async def jobs_fragment(self, request: Request, *, limit: int = PAGE_SIZE) -> str:
        status, job_type, before = self.list_filters(request)
        base = self.base(request)
        start = before if before is not None else await self.store.max_job_id() + 1
        rows = await self.store.browse_jobs(
            status=status, job_type=job_type, before=start, window=BROWSE_WINDOW, limit=limit
        )
        lines = []
        for job in rows:
            # A DONE job may keep the error of an earlier attempt: not news in a list.
            error = "" if job["status"] == "DONE" else (job["last_error"] or "").split("\n", 1)[0]
            lines.append(
                f'<tr data-job-id="{h(job["id"])}"><td>{job_link(base, job["id"])}</td>'
                f"<td>{type_link(base, job['job_type'])}</td><td>{badge_html(job['status'])}</td>"
                f'<td class="num">{h(job["attempts"])}/{h(job["max_attempts"])}</td>'
                f'<td class="num">{h(job["priority"])}</td><td>{when_html(job["created_at"])}</td>'
                f"<td>{when_html(job['finished_at'] or job['run_after'])}</td>"
                f'<td class="num">{h(ms_text(job["duration_ms"]))}</td>'
                f'<td class="err">{h(error[:160])}</td></tr>'
            )
        table = table_html(
            JOB_COLUMNS,
            lines,
            "No jobs match in this range of ids.",
        )
        if limit < PAGE_SIZE:  # the overview's recent jobs: the list page pages on
            return f'{table}<p><a href="{h(base)}/jobs">All jobs</a></p>'
        if len(rows) == limit:
            next_before = rows[-1]["id"]
            searched = ""
        else:
            next_before = max(start - BROWSE_WINDOW, 0)
            searched = (
                f'<span class="muted">Looked through ids {h(next_before)} to {h(start - 1)}. '
                "</span>"
            )
        older = ""
        if next_before > 0:
            query = {"before": str(next_before)}
            if status:
                query["status"] = status
            if job_type:
                query["job_type"] = job_type
            older = f'<a id="older" href="{h(base)}/jobs?{h(urlencode(query))}">Older jobs</a>'
        return f'{table}<p class="pager">{searched}{older}</p>'

    async def known_types(self) -> list[str]:
        """The job types to offer in the filter: those the live workers handle, the
        schedules enqueue, and the READY or RUNNING jobs have (no scan of old jobs)."""
        types: set[str] = set()
        for worker in await self.store.list_workers():
            types.update(worker["job_types"])
        types.update(schedule["job_type"] for schedule in await self.store.list_schedules())
        active = await self.store.queue_stats(count_cap=KNOWN_TYPES_ROWS)
        types.update(queue["job_type"] for queue in active)
        return sorted(types)

    async def jobs_page(self, request: Request) -> Response:
        base = self.base(request)
        wanted = request.query_params.get("id")
        if wanted is not None:  # the header's job-id box
            wanted = wanted.strip().lstrip("#")
            if DIGITS.fullmatch(wanted):
                return RedirectResponse(f"{base}/jobs/{int(wanted)}", status_code=303)
            return RedirectResponse(f"{base}/jobs?notice=bad-id", status_code=303)
        status, job_type, before = self.list_filters(request)
        options = "".join(
            f'<option value="{h(s)}"{" selected" if s == status else ""}>{h(s)}</option>'
            for s in STATUSES
        )
        types = "".join(f'<option value="{h(t)}">' for t in await self.known_types())
        filters = (
            f'<form method="get" action="{h(base)}/jobs" id="filters">'
            f'<select name="status"><option value="">any status</option>{options}</select> '
            f'<input name="job_type" placeholder="job type" list="job-types" '
            f'value="{h(job_type or "")}"><datalist id="job-types">{types}</datalist> '
            '<button type="submit">Filter</button></form>'
        )
        asked = request.query_params.get("status") or ""
        if asked and status is None:
            filters += (
                f'<p class="err" id="bad-filter">No status "{h(asked)}": the statuses are '
                f"{h(', '.join(STATUSES))}. Showing jobs of every status.</p>"
            )
        bulk = ""
        if status == "FAILED" and job_type:
            bulk = "<p>" + self.action_button(
                request,
                f"/queues/{path_segment(job_type)}/retry-failed",
                f"Retry all failed {job_type}",
            )
            bulk += f' <span class="muted">(up to {RETRY_FAILED_LIMIT:,} per click)</span></p>'
        query = request.url.query
        live_url = f"{base}/_/jobs" + (f"?{query}" if query else "")
        content = await self.jobs_fragment(request)
        live = "" if before is not None else f' data-live="{h(live_url)}"'
        return self.page(
            request,
            "Jobs",
            f'<h2>Jobs</h2>{filters}{bulk}<div id="jobs"{live}>{content}</div>',
        )

    async def route_jobs(self, request: Request) -> Response:
        return await self.jobs_page(request)

    async def route_jobs_fragment(self, request: Request) -> Response:
        return self.fragment(request, await self.jobs_fragment(request))

    async def route_retry_failed(self, request: Request) -> Response:
        refused = await self.check_action(request)
        if refused is not None:
            return refused
        job_type = request.path_params["job_type"]
        retried, _taken = await self.store.retry_failed(job_type, RETRY_FAILED_LIMIT)
        moved = len(retried)
        query = urlencode({"job_type": job_type, "notice": "retried-failed", "count": str(moved)})
        return RedirectResponse(f"{self.base(request)}/jobs?{query}", status_code=303)
