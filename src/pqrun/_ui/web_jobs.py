"""The dashboard's list of jobs: filtered by status, type and the time they were created
(a time range is found in the primary key by binary search, so it costs no paging),
newest first, paged by id (a bounded walk of the primary key); the scheduled view (READY
jobs due later, soonest first); and the boxes that select jobs for a bulk action
(``web_bulk`` confirms and makes it)."""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from pqrun._ui.web_filters import DIGITS, MAX_ID, PRESETS, ListFilter, stamp
from pqrun._ui.web_html import (
    STATUSES,
    badge_html,
    h,
    job_link,
    ms_text,
    table_html,
    type_link,
    when_html,
)
from pqrun._ui.web_page import DashboardPage

__all__ = ["DIGITS", "MAX_ID", "JobsListPage"]

PAGE_SIZE = 50
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
SCHEDULED_COLUMNS = ("id", "type", "#priority", "#attempts", "due (UTC)", "created")
#: Ids a list page looks through (a bounded walk of the primary key).
BROWSE_WINDOW = 50_000
#: ... and with a time range, whose ids are known: a day of a queue that takes a million
#: jobs in 8 days (125,000 ids) in one page, some 15-25 ms (docs/bench/dashboard_pages.py).
TIMED_WINDOW = 200_000
#: Entries of the pickup index the scheduled view reads per priority with a type chosen.
SCHEDULED_WINDOW = 5_000
#: READY and RUNNING jobs read (of each) for the job types the filter offers.
KNOWN_TYPES_ROWS = 10_000
#: The most jobs one bulk action over "all matching the filter" acts on.
BULK_LIMIT = 1_000
#: Bulk actions: the words their buttons use, the views and the statuses they apply to.
BULK_ACTIONS = {
    "retry": ("Retry", ("",), ("FAILED", "CANCELLED")),
    "cancel": ("Cancel", ("", "scheduled"), ("READY", "RUNNING")),
    "run-now": ("Run now", ("", "scheduled"), ("READY",)),
}


class JobsListPage(DashboardPage):
    """``/jobs`` (all jobs, or the scheduled view) and its live fragment ``/_/jobs``."""

    def select_box(self, job_id: Any, selectable: bool) -> str:
        """The box that selects a row for a bulk action (none in read-only mode); it
        belongs to the form ``#bulk`` outside the live part of the page."""
        if not selectable:
            return ""
        return (
            f'<td><input type="checkbox" name="id" value="{h(job_id)}" form="bulk" '
            f'aria-label="select job {h(job_id)}"></td>'
        )

    async def jobs_fragment(self, request: Request, *, limit: int = PAGE_SIZE) -> str:
        chosen = ListFilter.from_query(request.query_params)
        if limit < PAGE_SIZE:  # the overview's recent jobs: the newest, no filter
            chosen = ListFilter()
        if chosen.view == "scheduled":
            return await self.scheduled_fragment(request, chosen)
        base = self.base(request)
        selectable = self.allow_actions and limit == PAGE_SIZE
        low, high = await chosen.id_bounds(self.store)
        newest = await self.store.max_job_id() + 1 if high is None else high
        start = newest if chosen.before is None else min(chosen.before, newest)
        window = min(TIMED_WINDOW if chosen.timed else BROWSE_WINDOW, start - low)
        rows = []
        if window > 0:
            rows = await self.store.browse_jobs(
                status=chosen.status,
                job_type=chosen.job_type,
                before=start,
                window=window,
                limit=limit,
            )
        lines = []
        for job in rows:
            # A DONE job may keep the error of an earlier attempt: not news in a list.
            error = "" if job["status"] == "DONE" else (job["last_error"] or "").split("\n", 1)[0]
            lines.append(
                f'<tr data-job-id="{h(job["id"])}">{self.select_box(job["id"], selectable)}'
                f"<td>{job_link(base, job['id'])}</td>"
                f"<td>{type_link(base, job['job_type'])}</td><td>{badge_html(job['status'])}</td>"
                f'<td class="num">{h(job["attempts"])}/{h(job["max_attempts"])}</td>'
                f'<td class="num">{h(job["priority"])}</td><td>{when_html(job["created_at"])}</td>'
                f"<td>{when_html(job['finished_at'] or job['run_after'])}</td>"
                f'<td class="num">{h(ms_text(job["duration_ms"]))}</td>'
                f'<td class="err">{h(error[:160])}</td></tr>'
            )
        columns = ("", *JOB_COLUMNS) if selectable else JOB_COLUMNS
        empty = (
            f"No matching jobs {chosen.range_text()}."
            if chosen.timed and start - low <= TIMED_WINDOW
            else "No jobs match in this range of ids."
        )
        table = table_html(columns, lines, empty)
        if limit < PAGE_SIZE:  # the overview's recent jobs: the list page pages on
            return f'{table}<p><a href="{h(base)}/jobs">All jobs</a></p>'
        if len(rows) == limit:
            next_before = rows[-1]["id"]
            searched = ""
        else:
            next_before = max(start - window, 0)
            searched = (
                f'<span class="muted">Looked through ids {h(next_before)} to {h(start - 1)}. '
                "</span>"
                if window > 0
                else ""
            )
        older = ""
        if next_before > low:
            query = {**chosen.query(), "before": str(next_before)}
            older = f'<a id="older" href="{h(base)}/jobs?{h(urlencode(query))}">Older jobs</a>'
        elif chosen.timed:
            searched += f'<span class="muted">No older jobs {h(chosen.range_text())}.</span>'
        return f'{table}<p class="pager">{searched}{older}</p>'

    async def scheduled_fragment(self, request: Request, chosen: ListFilter) -> str:
        """READY jobs due later, soonest first, when each is due (UTC and how soon)."""
        base = self.base(request)
        selectable = self.allow_actions
        rows = await self.store.scheduled_jobs(
            job_type=chosen.job_type, after=chosen.after, window=SCHEDULED_WINDOW, limit=PAGE_SIZE
        )
        lines = [
            f'<tr data-job-id="{h(job["id"])}">{self.select_box(job["id"], selectable)}'
            f"<td>{job_link(base, job['id'])}</td><td>{h(job['job_type'])}</td>"
            f'<td class="num">{h(job["priority"])}</td>'
            f'<td class="num">{h(job["attempts"])}/{h(job["max_attempts"])}</td>'
            f'<td class="due">{when_html(job["run_after"], absolute=True)}</td>'
            f"<td>{when_html(job['created_at'])}</td></tr>"
            for job in rows
        ]
        columns = ("", *SCHEDULED_COLUMNS) if selectable else SCHEDULED_COLUMNS
        table = table_html(columns, lines, "No READY job is due later.")
        later = ""
        if len(rows) == PAGE_SIZE:
            last = rows[-1]
            query = {
                **chosen.query(),
                "after_at": last["run_after"].isoformat(),
                "after_id": str(last["id"]),
            }
            later = f'<a id="later" href="{h(base)}/jobs?{h(urlencode(query))}">Later jobs</a>'
        return f'{table}<p class="pager">{later}</p>'

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

    async def filters_html(self, request: Request, chosen: ListFilter) -> str:
        base = self.base(request)
        options = "".join(
            f'<option value="{h(s)}"{" selected" if s == chosen.status else ""}>{h(s)}</option>'
            for s in STATUSES
        )
        presets = "".join(
            f'<option value="{h(key)}"{" selected" if key == chosen.preset else ""}>'
            f"{h(label)}</option>"
            for key, (label, _ago) in PRESETS.items()
        )
        types = "".join(f'<option value="{h(t)}">' for t in await self.known_types())
        since = stamp(chosen.since) if chosen.since else ""
        until = stamp(chosen.until) if chosen.until else ""
        view = f'<input type="hidden" name="view" value="{h(chosen.view)}">' if chosen.view else ""
        status = (
            ""
            if chosen.view
            else f'<select name="status" aria-label="status"><option value="">any status'
            f"</option>{options}</select> "
        )
        times = (
            ""
            if chosen.view
            else '<select name="range" aria-label="created"><option value="">any time</option>'
            f"{presets}</select> "
            f'<label>from <input type="datetime-local" step="1" name="since" '
            f'value="{h(since)}"></label> '
            f'<label>to <input type="datetime-local" step="1" name="until" '
            f'value="{h(until)}"></label> <span class="muted">UTC</span> '
        )
        return (
            f'<form method="get" action="{h(base)}/jobs" id="filters">{view}{status}{times}'
            f'<input name="job_type" placeholder="job type" list="job-types" '
            f'value="{h(chosen.job_type or "")}"><datalist id="job-types">{types}</datalist> '
            '<button type="submit">Filter</button></form>'
        )

    def views_html(self, request: Request, chosen: ListFilter) -> str:
        base = self.base(request)
        links = []
        for view, label in (("", "All jobs"), ("scheduled", "Scheduled")):
            query = {"job_type": chosen.job_type} if chosen.job_type else {}
            if view:
                query["view"] = view
            href = f"{base}/jobs" + (f"?{urlencode(query)}" if query else "")
            current = ' aria-current="page"' if view == chosen.view else ""
            links.append(
                f'<a href="{h(href)}" data-view="{h(view or "all")}"{current}>{h(label)}</a>'
            )
        return f'<p class="views" id="views">{" · ".join(links)}</p>'

    def bulk_html(self, request: Request, chosen: ListFilter) -> str:
        """The form the rows' boxes belong to: which action, on the ticked jobs or on all
        that match the filter; it asks for a confirmation first (``web_bulk``)."""
        if not self.allow_actions:
            return ""
        buttons = "".join(
            f'<button type="submit" name="action" value="{h(action)}" '
            f'data-bulk="{h(action)}">{h(label)}</button> '
            for action, (label, views, statuses) in BULK_ACTIONS.items()
            if chosen.view in views and (chosen.status is None or chosen.status in statuses)
        )
        shortcut = ""
        if chosen.status in ("FAILED", "CANCELLED") and not chosen.view:
            query = urlencode({**chosen.query(), "action": "retry", "all": "1"})
            kind = f" {chosen.job_type}" if chosen.job_type else ""
            shortcut = (
                f' <a id="retry-all" href="{h(self.base(request))}/jobs/confirm?{h(query)}">'
                f"Retry all {h(chosen.status.lower())}{h(kind)} jobs…</a>"
            )
        return (
            f'<form method="get" action="{h(self.base(request))}/jobs/confirm" id="bulk" '
            f'class="bulk">{chosen.hidden_inputs()}<span class="muted">Ticked jobs:</span> '
            f'{buttons}<label><input type="checkbox" name="all" value="1" id="all"> '
            f"all jobs matching the filter instead (up to {BULK_LIMIT:,})</label>"
            f"{shortcut}</form>"
        )

    async def jobs_page(self, request: Request) -> Response:
        base = self.base(request)
        wanted = request.query_params.get("id")
        if wanted is not None:  # the header's job-id box
            wanted = wanted.strip().lstrip("#")
            if DIGITS.fullmatch(wanted):
                return RedirectResponse(f"{base}/jobs/{int(wanted)}", status_code=303)
            return RedirectResponse(f"{base}/jobs?notice=bad-id", status_code=303)
        chosen = ListFilter.from_query(request.query_params)
        filters = self.views_html(request, chosen) + await self.filters_html(request, chosen)
        for problem in chosen.problems:
            # Text, not an attribute: its quotes stay quotes (the value in them is escaped).
            text = html.escape(problem, quote=False)
            filters += f'<p class="err bad-filter" id="bad-filter">{text}</p>'
        query = request.url.query
        live_url = f"{base}/_/jobs" + (f"?{query}" if query else "")
        content = await self.jobs_fragment(request)
        paged = chosen.before is not None or chosen.after is not None
        live = "" if paged else f' data-live="{h(live_url)}"'
        heading = "Scheduled jobs" if chosen.view == "scheduled" else "Jobs"
        return self.page(
            request,
            heading,
            f"<h2>{h(heading)}</h2>{filters}{bulk_result(request)}"
            f'{self.bulk_html(request, chosen)}<div id="jobs"{live}>{content}</div>',
        )

    async def route_jobs(self, request: Request) -> Response:
        return await self.jobs_page(request)

    async def route_jobs_fragment(self, request: Request) -> Response:
        return self.fragment(request, await self.jobs_fragment(request))


#: What a bulk action did, as its result says it: the verb, and why a job was not moved.
BULK_DONE = {
    "retry": ("retried", "no longer FAILED or CANCELLED, or an active job holds its dedupe_key"),
    "cancel": ("cancelled", "no longer READY or RUNNING"),
    "run-now": ("made due now", "no longer READY, or due already"),
}


def bulk_result(request: Request) -> str:
    """The result of a bulk action the page was redirected from: how many jobs moved,
    and how many did not (someone else moved them between confirmation and action)."""
    params = request.query_params
    done = BULK_DONE.get(params.get("done", ""))
    moved, missed = params.get("moved", ""), params.get("missed", "")
    if done is None or not DIGITS.fullmatch(moved) or not DIGITS.fullmatch(missed):
        return ""
    verb, why = done
    text = f"{int(moved):,} {'job' if int(moved) == 1 else 'jobs'} {verb}."
    if int(missed):
        text += (
            f" {int(missed):,} not: {why} (someone or something else moved "
            f"{'it' if int(missed) == 1 else 'them'} first)."
        )
    return f'<p class="notice" id="bulk-result">{h(text)}</p>'
