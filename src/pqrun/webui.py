"""The web dashboard: queues, jobs, workers and schedules, with opt-in actions.

Mount it in your app (``pip install 'pqrun[web]'``)::

    app.mount("/jobs", pqrun.dashboard(store))                      # read-only
    app.mount("/jobs", pqrun.dashboard(store, allow_actions=True))  # retry, cancel

or run it alone: ``pqrun dashboard --port 8080``. It has no login of its own: mount it
behind your app's authentication. With ``allow_actions=True`` every action is a POST
carrying a CSRF token that must match the token in the dashboard's cookie (a
double-submit cookie, SameSite=Strict), and a cross-site Origin is refused.

Every page reads a bounded amount of the table (see ``PgJobStore.browse_jobs``,
``queue_stats`` and ``status_counts``), so it stays fast on millions of rows. Pages
refresh their live parts by polling a fragment every two seconds.
"""

from __future__ import annotations

import hmac
import html
import json
import re
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from ._ui.formatting import count_text, relative_text
from .errors import JobConflict
from .models import Job, JobStatus
from .store import PgJobStore

CSRF_COOKIE = "pqrun_csrf"
CSRF_FIELD = "csrf_token"
#: How often pages poll their live parts (milliseconds).
REFRESH_MS = 2000
#: The overview is read from the database at most this often, however many viewers...
OVERVIEW_CACHE_SECONDS = 1.0
#: ... and a slow read (a backlog of millions of READY jobs) is kept this many times
#: longer than it took, so that watching the dashboard costs the database at most a
#: tenth of one connection's time.
OVERVIEW_COST_FACTOR = 10.0
#: Rates are measured over samples this old at most.
RATE_WINDOW_SECONDS = 60.0
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
#: Jobs the overview lists under "Recent jobs".
RECENT_JOBS = 12
#: Ids a list page looks through (a bounded walk of the primary key).
BROWSE_WINDOW = 50_000
#: Payload and result are cut to this many characters on the job page.
SHOW_JSON_LIMIT = 100_000
#: How many failed jobs one "retry all failed" click moves.
RETRY_FAILED_LIMIT = 10_000
STATUSES = [s.value for s in JobStatus]
# Plain ASCII digits (str.isdigit() also takes "²", which int() refuses).
DIGITS = re.compile(r"[0-9]{1,19}")
# Stands for the CSRF token in rendered HTML until the response fills it in. A NUL
# cannot come from the database (text and JSON hold none), so no value can forge it.
TOKEN_SLOT = "\x00csrf\x00"

NOTICES = {
    "retried": "The job is READY again.",
    "not-retried": "Not retried: only FAILED or CANCELLED jobs can be retried.",
    "cancelled": "The job is CANCELLED.",
    "not-cancelled": "Not cancelled: only READY or RUNNING jobs can be cancelled.",
    "conflict": "Not retried: another active job holds the same dedupe_key.",
    "retried-failed": "{count} failed jobs of this type are READY again.",
}


def h(value: Any) -> str:
    """Escape any value for HTML text or a quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def _when(moment: datetime | None) -> str:
    if moment is None:
        return '<span class="muted">-</span>'
    if moment.tzinfo is None:  # a naive value from elsewhere (a schedule): read as UTC
        moment = moment.replace(tzinfo=UTC)
    age = (datetime.now(UTC) - moment).total_seconds()
    stamp = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f'<span title="{h(stamp)} UTC">{h(relative_text(age))}</span>'


def _badge(status: str) -> str:
    return f'<span class="badge s-{h(status.lower())}">{h(status)}</span>'


def _table(headers: Sequence[str], rows: Iterable[str], empty: str) -> str:
    body = "".join(rows)
    if not body:
        return f'<p class="muted">{h(empty)}</p>'
    # A title starting with "#" heads a column of numbers (aligned right).
    head = "".join(
        f'<th class="num">{h(title[1:])}</th>' if title.startswith("#") else f"<th>{h(title)}</th>"
        for title in headers
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:10px 20px;display:flex;gap:18px;align-items:center}
header a{color:#cfd8e8;text-decoration:none}header b{font-size:16px;margin-right:10px}
main{padding:16px 20px;max-width:1300px}h2{font-size:15px;margin:22px 0 8px}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #dde1e8}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eceef2;vertical-align:top}
th{background:#eef0f4;font-weight:600}td.num,th.num{text-align:right}
.muted{color:#7a8291}.badge{padding:1px 7px;border-radius:9px;font-size:12px;font-weight:600}
.s-ready{background:#e3efff;color:#1e56b0}.s-running{background:#fff4d6;color:#8a5a00}
.s-done{background:#def5e5;color:#1c6b3a}.s-failed{background:#fde2e1;color:#a52a22}
.s-cancelled{background:#ececec;color:#555}
.cards{display:flex;gap:12px;flex-wrap:wrap}.card{background:#fff;border:1px solid #dde1e8;
padding:10px 14px;min-width:120px}.card b{display:block;font-size:20px}
pre{background:#fff;border:1px solid #dde1e8;padding:10px;overflow:auto;max-height:420px}
form.inline{display:inline}button{cursor:pointer}.notice{background:#fff8d8;padding:8px 12px;
border:1px solid #eedc82}.err{color:#a52a22;white-space:pre-wrap;word-break:break-word}
dl{display:grid;grid-template-columns:160px 1fr;gap:4px 12px}dt{color:#7a8291}dd{margin:0}
"""

# Polls the fragment of each [data-live] element and swaps it in; stops while the tab
# is hidden, and keeps the last content when a poll fails.
JS = """
(function () {
  function poll(el) {
    if (document.hidden) return;
    fetch(el.dataset.live, {headers: {"X-Requested-With": "pqrun"}, credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (text) { if (text !== null) el.innerHTML = text; })
      .catch(function () {});
  }
  document.querySelectorAll("[data-live]").forEach(function (el) {
    setInterval(function () { poll(el); }, parseInt(el.dataset.every || "2000", 10));
  });
})();
"""


class _Dashboard:
    def __init__(self, store: PgJobStore, *, allow_actions: bool, title: str) -> None:
        self.store = store
        self.allow_actions = allow_actions
        self.title = title
        self._overview: tuple[float, dict[str, Any]] | None = None
        # (monotonic time, newest id, active jobs): the rates come from their changes.
        self._samples: deque[tuple[float, int, int]] = deque()

    # -- plumbing --------------------------------------------------------------------

    @staticmethod
    def base(request: Request) -> str:
        """The path the dashboard is mounted at ('' at the root)."""
        return str(request.scope.get("root_path", "")).rstrip("/")

    @staticmethod
    def token(request: Request) -> tuple[str, bool]:
        """The CSRF token of this browser (and whether it is new, to be set as a cookie)."""
        token = request.cookies.get(CSRF_COOKIE, "")
        if len(token) == 43 and token.replace("-", "").replace("_", "").isalnum():
            return token, False
        return secrets.token_urlsafe(32), True

    def respond(self, request: Request, body: str, token: str, new_token: bool) -> HTMLResponse:
        response = HTMLResponse(body, headers=_SECURITY_HEADERS)
        if new_token:
            response.set_cookie(
                CSRF_COOKIE,
                token,
                path=self.base(request) or "/",
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
        return response

    def page(self, request: Request, heading: str, content: str) -> Response:
        token, new = self.token(request)
        base = self.base(request)
        mode = (
            '<span class="muted">actions enabled</span>'
            if self.allow_actions
            else '<span class="muted">read-only</span>'
        )
        notice = NOTICES.get(request.query_params.get("notice", ""))
        count = request.query_params.get("count", "")
        if notice is not None and "{count}" in notice:
            notice = notice.replace("{count}", count if count.isdigit() else "The")
        notice_html = f'<p class="notice" id="notice">{h(notice)}</p>' if notice else ""
        body = (
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{h(heading)} - {h(self.title)}</title>"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<link rel="icon" href="data:,">'
            f'<link rel="stylesheet" href="{h(base)}/_/app.css"></head><body>'
            f'<header><b>{h(self.title)}</b><a href="{h(base)}/">Overview</a>'
            f'<a href="{h(base)}/jobs">Jobs</a>{mode}</header>'
            f"<main>{notice_html}{content.replace(TOKEN_SLOT, h(token))}</main>"
            f'<script src="{h(base)}/_/app.js"></script></body></html>'
        )
        return self.respond(request, body, token, new)

    def fragment(self, request: Request, content: str) -> Response:
        token, new = self.token(request)
        return self.respond(request, content.replace(TOKEN_SLOT, h(token)), token, new)

    def action_button(self, request: Request, path: str, label: str) -> str:
        """A POST form for an action, or nothing in read-only mode."""
        if not self.allow_actions:
            return ""
        # The token placeholder is filled per response, after escaping everything else.
        return (
            f'<form class="inline" method="post" action="{h(self.base(request) + path)}">'
            f'<input type="hidden" name="{CSRF_FIELD}" value="{TOKEN_SLOT}">'
            f'<button type="submit" data-action="{h(label.lower())}">{h(label)}</button></form>'
        )

    # -- overview --------------------------------------------------------------------

    async def overview_data(self) -> dict[str, Any]:
        now = time.monotonic()
        if self._overview is not None and now < self._overview[0]:
            return self._overview[1]
        queues = await self.store.queue_stats()
        counts = await self.store.status_counts()
        newest = await self.store.max_job_id()
        workers = await self.store.list_workers()
        schedules = await self.store.list_schedules()
        active = sum(q["ready"] + q["running"] for q in queues)
        data = {
            "queues": queues,
            "counts": counts,
            "exact": all(entry["exact"] for entry in counts.values()),
            "rates": self.rates(now, newest, active),
            "workers": workers,
            "schedules": schedules,
        }
        took = time.monotonic() - now
        keep = max(OVERVIEW_CACHE_SECONDS, OVERVIEW_COST_FACTOR * took)
        self._overview = (now + took + keep, data)  # (good until, data)
        return data

    def rates(self, now: float, newest: int, active: int) -> tuple[float, float] | None:
        """(enqueued/s, finished/s) since the oldest sample in the window, if any.

        New ids count enqueues; enqueues minus the growth of the active jobs count the
        jobs that left READY/RUNNING. Exact enough for a glance, and free.
        """
        samples = self._samples
        samples.append((now, newest, active))
        while samples and now - samples[0][0] > RATE_WINDOW_SECONDS:
            samples.popleft()
        then, old_newest, old_active = samples[0]
        elapsed = now - then
        if elapsed < 1.0:
            return None
        enqueued = max(newest - old_newest, 0)
        finished = max(enqueued - (active - old_active), 0)
        return enqueued / elapsed, finished / elapsed

    async def overview_fragment(self, request: Request) -> str:
        data = await self.overview_data()
        base = self.base(request)
        counts: dict[str, dict[str, Any]] = data["counts"]
        cards = "".join(
            f'<div class="card"><a href="{h(base)}/jobs?status={h(status)}">'
            f"{_badge(status)}</a><b>{h(count_text(counts[status]))}</b></div>"
            for status in STATUSES
        )
        rates = data["rates"]
        if rates is None:
            rate_cards = '<div class="card">rates<b class="muted">measuring</b></div>'
        else:
            rate_cards = (
                f'<div class="card">enqueued<b>{rates[0]:,.1f}/s</b></div>'
                f'<div class="card">finished<b>{rates[1]:,.1f}/s</b></div>'
            )
        note = (
            ""
            if data["exact"]
            else '<p class="muted">Totals over 20,000 are the planner\'s estimates (~, as '
            "of the last ANALYZE; ≥ before the first one).</p>"
        )
        queue_rows = [
            f'<tr><td><a href="{h(base)}/jobs?{h(urlencode({"job_type": q["job_type"]}))}">'
            f"{h(q['job_type'])}</a></td>"
            f'<td class="num">{q["ready"]:,}</td><td class="num">{q["due"]:,}</td>'
            f'<td class="num">{q["running"]:,}</td>'
            f"<td>{h(_age(q['oldest_due_seconds']))}</td></tr>"
            for q in data["queues"]
        ]
        queues = _table(
            ["job type", "#ready", "#due now", "#running", "oldest due waits"],
            queue_rows,
            "No READY or RUNNING jobs.",
        )
        worker_rows = [
            f"<tr><td>{h(w['worker_id'])}</td><td>{h(w['host'])}</td>"
            f'<td class="num">{h(w["pid"])}</td><td>{h(", ".join(w["job_types"]))}</td>'
            f'<td class="num">{h(w["concurrency"])}</td><td>{_when(w["started_at"])}</td>'
            f"<td>{_when(w['heartbeat_at'])}</td></tr>"
            for w in data["workers"]
        ]
        workers = _table(
            ["worker", "host", "#pid", "job types", "#concurrency", "started", "heartbeat"],
            worker_rows,
            "No worker is registered.",
        )
        schedule_rows = [
            f"<tr><td>{h(s.get('name'))}</td><td>{h(s.get('job_type'))}</td>"
            f"<td>{h(_every(s))}</td><td>{h(s.get('timezone'))}</td>"
            f"<td>{_when(s.get('next_run_at'))}</td><td>{_when(s.get('last_run_at'))}</td>"
            f"<td>{self.job_link(base, s.get('last_job_id'))}</td></tr>"
            for s in data["schedules"]
        ]
        schedules = _table(
            ["schedule", "job type", "runs", "timezone", "next run", "last run", "last job"],
            schedule_rows,
            "No schedules.",
        )
        return (
            f'<div class="cards" id="totals">{cards}{rate_cards}</div>{note}'
            f'<h2>Queues</h2><div id="queues">{queues}</div>'
            f'<h2>Workers</h2><div id="workers">{workers}</div>'
            f'<h2>Schedules</h2><div id="schedules">{schedules}</div>'
        )

    async def recent_fragment(self, request: Request) -> str:
        return await self.jobs_fragment(request, limit=RECENT_JOBS)

    @staticmethod
    def job_link(base: str, job_id: Any) -> str:
        if job_id is None:
            return '<span class="muted">-</span>'
        return f'<a href="{h(base)}/jobs/{h(job_id)}">{h(job_id)}</a>'

    # -- jobs list -------------------------------------------------------------------

    def list_filters(self, request: Request) -> tuple[str | None, str | None, int | None]:
        status = request.query_params.get("status") or None
        if status is not None and status not in STATUSES:
            status = None
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
                f'<tr data-job-id="{h(job["id"])}"><td>{self.job_link(base, job["id"])}</td>'
                f"<td>{h(job['job_type'])}</td><td>{_badge(job['status'])}</td>"
                f'<td class="num">{h(job["attempts"])}/{h(job["max_attempts"])}</td>'
                f'<td class="num">{h(job["priority"])}</td><td>{_when(job["created_at"])}</td>'
                f"<td>{_when(job['finished_at'] or job['run_after'])}</td>"
                f'<td class="num">{h(_ms(job["duration_ms"]))}</td>'
                f'<td class="err">{h(error[:160])}</td></tr>'
            )
        table = _table(
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

    async def jobs_page(self, request: Request) -> Response:
        status, job_type, before = self.list_filters(request)
        base = self.base(request)
        options = "".join(
            f'<option value="{h(s)}"{" selected" if s == status else ""}>{h(s)}</option>'
            for s in STATUSES
        )
        filters = (
            f'<form method="get" action="{h(base)}/jobs" id="filters">'
            f'<select name="status"><option value="">any status</option>{options}</select> '
            f'<input name="job_type" placeholder="job type" value="{h(job_type or "")}"> '
            '<button type="submit">Filter</button></form>'
        )
        bulk = ""
        if status == "FAILED" and job_type:
            bulk = "<p>" + self.action_button(
                request,
                f"/queues/{_path_segment(job_type)}/retry-failed",
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

    # -- one job ---------------------------------------------------------------------

    def job_fragment(self, request: Request, job: Job) -> str:
        base = self.base(request)
        actions = ""
        if job.status in (JobStatus.FAILED, JobStatus.CANCELLED):
            actions += self.action_button(request, f"/jobs/{job.id}/retry", "Retry")
        if job.status in (JobStatus.READY, JobStatus.RUNNING):
            actions += self.action_button(request, f"/jobs/{job.id}/cancel", "Cancel")
        waited = (
            _age((job.locked_at - job.run_after).total_seconds())
            if job.locked_at is not None and job.locked_at >= job.run_after
            else "-"
        )
        facts = [
            ("status", _badge(job.status.value)),
            ("job type", h(job.job_type)),
            ("attempts", f"{h(job.attempts)} of {h(job.max_attempts)}"),
            ("priority", h(job.priority)),
            ("dedupe key", h(job.dedupe_key or "-")),
            ("timeout", h(f"{job.timeout_seconds} s" if job.timeout_seconds else "none")),
            ("created", _when(job.created_at)),
            ("due", _when(job.run_after)),
            ("claimed", _when(job.locked_at)),
            ("waited for a worker", h(waited)),
            ("worker", h(job.locked_by or "-")),
            ("finished", _when(job.finished_at)),
            ("took", h(_ms(job.duration_ms))),
            ("updated", _when(job.updated_at)),
            ("trace", h(job.trace_context or "-")),
        ]
        listing = "".join(f"<dt>{h(name)}</dt><dd>{value}</dd>" for name, value in facts)
        earlier = " (of an earlier attempt)" if job.status is JobStatus.DONE else ""
        error = (
            f'<h2>Last error{earlier}</h2><pre class="err" id="last-error">'
            f"{h(job.last_error)}</pre>"
            if job.last_error
            else ""
        )
        return (
            f'<p id="actions">{actions}</p><dl id="facts" data-status="{h(job.status.value)}">'
            f"{listing}</dl>"
            f'<h2>Payload</h2><pre id="payload">{h(_json(job.payload))}</pre>'
            f'<h2>Result</h2><pre id="result">{h(_json(job.result))}</pre>{error}'
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

    # -- actions ---------------------------------------------------------------------

    async def check_action(self, request: Request) -> Response | None:
        """Refuse an action unless allowed, same-origin and carrying the cookie's token."""
        if not self.allow_actions:
            return _refuse(
                403,
                "Actions are disabled: this dashboard is read-only. Mount it with "
                "pqrun.dashboard(store, allow_actions=True) (or pqrun dashboard "
                "--allow-actions) to retry and cancel jobs from it.",
            )
        # Host against host only: behind a proxy that ends TLS the scheme differs.
        origin = request.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
            return _refuse(403, "Refused: the request came from another site.")
        cookie = request.cookies.get(CSRF_COOKIE, "")
        body = (await request.body())[:4096].decode("utf-8", "replace")
        sent = parse_qs(body).get(CSRF_FIELD, [""])[0]
        if not cookie or not hmac.compare_digest(cookie.encode(), sent.encode()):
            return _refuse(
                403,
                "Refused: the form's CSRF token is missing or does not match this "
                "browser's. Reload the page and try again.",
            )
        return None

    def after_action(self, request: Request, path: str, notice: str) -> Response:
        return RedirectResponse(f"{self.base(request)}{path}?notice={notice}", status_code=303)

    # -- routes ----------------------------------------------------------------------

    async def route_overview(self, request: Request) -> Response:
        content = await self.overview_fragment(request)
        recent = await self.recent_fragment(request)
        base = self.base(request)
        return self.page(
            request,
            "Overview",
            f'<div id="overview" data-live="{h(base)}/_/overview" data-every="{REFRESH_MS}">'
            f"{content}</div><h2>Recent jobs</h2>"
            f'<div id="recent" data-live="{h(base)}/_/recent" data-every="{REFRESH_MS}">'
            f"{recent}</div>",
        )

    async def route_recent_fragment(self, request: Request) -> Response:
        return self.fragment(request, await self.recent_fragment(request))

    async def route_overview_fragment(self, request: Request) -> Response:
        return self.fragment(request, await self.overview_fragment(request))

    async def route_jobs(self, request: Request) -> Response:
        return await self.jobs_page(request)

    async def route_jobs_fragment(self, request: Request) -> Response:
        return self.fragment(request, await self.jobs_fragment(request))

    async def route_job(self, request: Request) -> Response:
        job = await self.get_job(request)
        if job is None:
            return _refuse(404, "No such job.")
        live = f"{self.base(request)}/_/jobs/{job.id}"
        return self.page(
            request,
            f"Job {job.id}",
            f"<h2>Job {h(job.id)}</h2>"
            f'<div id="job" data-live="{h(live)}">{self.job_fragment(request, job)}</div>',
        )

    async def route_job_fragment(self, request: Request) -> Response:
        job = await self.get_job(request)
        if job is None:
            return _refuse(404, "No such job.")
        return self.fragment(request, self.job_fragment(request, job))

    async def route_retry(self, request: Request) -> Response:
        refused = await self.check_action(request)
        if refused is not None:
            return refused
        job = await self.get_job(request)
        if job is None:
            return _refuse(404, "No such job.")
        try:
            notice = "retried" if await self.store.retry(job.id) else "not-retried"
        except JobConflict:
            notice = "conflict"
        return self.after_action(request, f"/jobs/{job.id}", notice)

    async def route_cancel(self, request: Request) -> Response:
        refused = await self.check_action(request)
        if refused is not None:
            return refused
        job = await self.get_job(request)
        if job is None:
            return _refuse(404, "No such job.")
        notice = "cancelled" if await self.store.cancel(job.id) else "not-cancelled"
        return self.after_action(request, f"/jobs/{job.id}", notice)

    async def route_retry_failed(self, request: Request) -> Response:
        refused = await self.check_action(request)
        if refused is not None:
            return refused
        job_type = request.path_params["job_type"]
        retried, _taken = await self.store.retry_failed(job_type, RETRY_FAILED_LIMIT)
        moved = len(retried)
        query = urlencode({"job_type": job_type, "notice": "retried-failed", "count": str(moved)})
        return RedirectResponse(f"{self.base(request)}/jobs?{query}", status_code=303)

    async def route_css(self, request: Request) -> Response:
        return Response(CSS, media_type="text/css", headers={"Cache-Control": "max-age=300"})

    async def route_js(self, request: Request) -> Response:
        return Response(JS, media_type="text/javascript", headers={"Cache-Control": "max-age=300"})


_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _refuse(status: int, message: str) -> Response:
    return HTMLResponse(
        f"<!doctype html><title>{status}</title><p>{h(message)}</p>",
        status_code=status,
        headers=_SECURITY_HEADERS,
    )


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return relative_text(seconds).removesuffix(" ago")


def _ms(duration_ms: int | None) -> str:
    if duration_ms is None:
        return "-"
    return f"{duration_ms} ms" if duration_ms < 10_000 else f"{duration_ms / 1000:.1f} s"


def _every(schedule: dict[str, Any]) -> str:
    if schedule.get("cron"):
        return f"cron {schedule['cron']}"
    if schedule.get("every_seconds"):
        return f"every {schedule['every_seconds']} s"
    return "-"


def _json(value: Any) -> str:
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    if len(text) > SHOW_JSON_LIMIT:
        return text[:SHOW_JSON_LIMIT] + f"\n... ({len(text):,} characters in all)"
    return text


def _path_segment(text: str) -> str:
    return quote(text, safe="")


def dashboard(store: PgJobStore, *, allow_actions: bool = False, title: str = "pqrun") -> Starlette:
    """The dashboard as a Starlette app: ``app.mount("/jobs", pqrun.dashboard(store))``.

    Read-only unless ``allow_actions=True``, which adds retry, cancel and "retry all
    failed of a type", each a POST guarded by a CSRF token. It has no login: mount it
    behind your app's authentication. The store's pool opens on the first request.
    """
    if not isinstance(store, PgJobStore):
        raise TypeError(f"dashboard() needs a PgJobStore, got {store!r}")
    board = _Dashboard(store, allow_actions=allow_actions, title=title)
    routes = [
        Route("/", board.route_overview),
        Route("/jobs", board.route_jobs),
        Route("/jobs/{job_id}", board.route_job),
        Route("/jobs/{job_id}/retry", board.route_retry, methods=["POST"]),
        Route("/jobs/{job_id}/cancel", board.route_cancel, methods=["POST"]),
        Route("/queues/{job_type:path}/retry-failed", board.route_retry_failed, methods=["POST"]),
        Route("/_/overview", board.route_overview_fragment),
        Route("/_/jobs", board.route_jobs_fragment),
        Route("/_/recent", board.route_recent_fragment),
        Route("/_/jobs/{job_id}", board.route_job_fragment),
        Route("/_/app.css", board.route_css),
        Route("/_/app.js", board.route_js),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Run only when the dashboard is the server's app (pqrun dashboard); a mounted
        # app gets no lifespan, and its store is the host app's to close.
        owns_store = not store.started
        try:
            yield
        finally:
            if owns_store:
                await store.close()

    return Starlette(routes=routes, lifespan=lifespan)
