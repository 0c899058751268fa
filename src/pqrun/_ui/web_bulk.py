"""The dashboard's bulk actions: retry, cancel or run now the jobs ticked in the list,
or all that match its filter (at most ``BULK_LIMIT``). A GET renders the confirmation,
which says how many jobs and which; its POST (CSRF-checked, only with actions allowed)
moves them in one guarded statement and the list then says how many moved and how many
did not, because someone else moved them in between."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from pqrun._ui.web_filters import DIGITS, MAX_ID, ListFilter
from pqrun._ui.web_html import badge_html, h, job_link, refuse, table_html, when_html
from pqrun._ui.web_jobs import BROWSE_WINDOW, BULK_ACTIONS, BULK_LIMIT, SCHEDULED_WINDOW
from pqrun._ui.web_page import CSRF_FIELD, READ_ONLY, TOKEN_SLOT, DashboardPage
from pqrun.errors import JobConflict

#: Entries of each status's index read to find "all jobs matching the filter" when the
#: time range spans more ids than a list page walks.
BULK_SCAN = 10_000
#: The confirmation shows this many jobs in a table, and the ids of the others.
SHOWN = 100
#: The statuses each action moves jobs from, and what it does to them.
ACTION_STATUSES = {action: statuses for action, (_, _, statuses) in BULK_ACTIONS.items()}
ACTION_TEXT = {
    "retry": "FAILED or CANCELLED jobs become READY, due now, with their attempts "
    "counted from zero",
    "cancel": "READY jobs become CANCELLED; the workers running RUNNING jobs are told to "
    "cancel them, and they become CANCELLED",
    "run-now": "READY jobs due later become due now (they stay READY; nothing else changes)",
}
WHICH = {
    "retry": "FAILED or CANCELLED",
    "cancel": "READY or RUNNING",
    "run-now": "READY and due later",
}


def applies(action: str, job: dict[str, Any], now: datetime) -> bool:
    """Whether ``action`` would move ``job`` as it was read (its statement checks again)."""
    if job["status"] not in ACTION_STATUSES[action]:
        return False
    return action != "run-now" or job["run_after"] > now


class BulkPage(DashboardPage):
    """``/jobs/confirm`` (the confirmation, a GET) and ``/jobs/bulk/{action}`` (the POST)."""

    async def matching(self, action: str, chosen: ListFilter) -> tuple[list[dict[str, Any]], str]:
        """The jobs ``action`` would act on among all that match the filter, newest (or
        soonest due) first, and what the page should say of those it did not look at."""
        statuses = [
            s for s in ACTION_STATUSES[action] if chosen.status is None or s == chosen.status
        ]
        if not statuses:
            return [], ""
        if chosen.view == "scheduled" or action == "run-now":
            # Only READY jobs due later: the scheduled view's own walk, soonest first.
            if "READY" not in statuses:
                return [], ""  # e.g. retry: no scheduled job is FAILED or CANCELLED
            low, high = await chosen.id_bounds(self.store)
            jobs = await self.store.scheduled_jobs(
                job_type=chosen.job_type, window=SCHEDULED_WINDOW, limit=BULK_LIMIT
            )
            jobs = [j for j in jobs if low <= j["id"] < (high or MAX_ID)]
            if chosen.job_type is not None:
                return jobs, (
                    f"Looked through at most {SCHEDULED_WINDOW:,} scheduled jobs of each "
                    "priority, soonest due first."
                )
            return jobs, ""
        low, high = await chosen.id_bounds(self.store)
        if high is None:
            high = await self.store.max_job_id() + 1
        if high - low <= BROWSE_WINDOW:
            # A time range as narrow as a list page: walk all of it.
            jobs = []
            for status in statuses:
                jobs += await self.store.browse_jobs(
                    status=status,
                    job_type=chosen.job_type,
                    before=high,
                    window=max(high - low, 1),
                    limit=BULK_LIMIT,
                )
            return sorted(jobs, key=lambda j: j["id"], reverse=True)[:BULK_LIMIT], ""
        jobs = await self.store.bulk_candidates(
            statuses, job_type=chosen.job_type, ids=(low, high), scan=BULK_SCAN, limit=BULK_LIMIT
        )
        order = {
            "READY": "READY in the order workers take them",
            "RUNNING": "RUNNING by worker",
            "FAILED": "FAILED newest finished first",
            "CANCELLED": "CANCELLED newest finished first",
        }
        return jobs, (
            f"Looked through the first {BULK_SCAN:,} jobs of each status "
            f"({', '.join(order[s] for s in statuses)}) only. More may match: narrow the "
            "time range to look through all of it."
        )

    async def route_confirm(self, request: Request) -> Response:
        if not self.allow_actions:
            return refuse(403, READ_ONLY)
        action = request.query_params.get("action", "")
        if action not in BULK_ACTIONS:
            return refuse(400, f'No bulk action "{action}": use {", ".join(BULK_ACTIONS)}.')
        chosen = ListFilter.from_query(request.query_params)
        now = datetime.now(UTC)
        left_out: list[dict[str, Any]] = []
        if request.query_params.get("all"):
            jobs, note = await self.matching(action, chosen)
            source = "matching the filter"
        else:
            ids = sorted(
                {
                    int(i)
                    for i in request.query_params.getlist("id")
                    if DIGITS.fullmatch(i) and 0 < int(i) <= MAX_ID
                }
            )
            if len(ids) > BULK_LIMIT:
                return refuse(400, f"{len(ids):,} jobs ticked: at most {BULK_LIMIT:,} at once.")
            selected = await self.store.jobs_by_ids(ids) if ids else []
            jobs = [j for j in selected if applies(action, j, now)]
            left_out = [j for j in selected if not applies(action, j, now)]
            note = ""
            source = "ticked"
        return self.page(request, "Confirm", self.confirm_html(
            request, action, chosen, jobs, left_out, note, source
        ))  # fmt: skip

    def confirm_html(
        self,
        request: Request,
        action: str,
        chosen: ListFilter,
        jobs: Sequence[dict[str, Any]],
        left_out: Sequence[dict[str, Any]],
        note: str,
        source: str,
    ) -> str:
        base = self.base(request)
        label = BULK_ACTIONS[action][0]
        back_query = urlencode(chosen.query())
        back = f"{base}/jobs" + (f"?{back_query}" if back_query else "")
        count = len(jobs)
        noun = "job" if count == 1 else "jobs"
        parts = [f"<h2>{h(label)} {count:,} {noun}?</h2>"]
        if chosen.range_text() and source != "ticked":
            parts.append(f'<p class="muted">Filter: {h(chosen.range_text())}.</p>')
        parts.append(
            f'<p id="confirm-count" data-count="{count}">This acts on <b>{count:,}</b> '
            f"{noun} ({h(source)}, {h(WHICH[action])} when last read): "
            f"{h(ACTION_TEXT[action])}.</p>"
        )
        if count == BULK_LIMIT:
            parts.append(
                f'<p class="notice" id="capped">These are the first {BULK_LIMIT:,}, the most '
                "one action takes: more may match. Confirm, then do it again for the "
                "next.</p>"
            )
        if note:
            parts.append(f'<p class="muted" id="partial">{h(note)}</p>')
        if left_out:
            listed = ", ".join(f"{j['id']} ({j['status']})" for j in left_out[:50])
            more = f" and {len(left_out) - 50:,} more" if len(left_out) > 50 else ""
            parts.append(
                f'<p id="left-out">{len(left_out):,} of the ticked jobs '
                f"{'is' if len(left_out) == 1 else 'are'} not {h(WHICH[action])}, and "
                f"will be left as they are: {h(listed)}{h(more)}.</p>"
            )
        if count:
            ids = ",".join(str(j["id"]) for j in jobs)
            parts.append(
                f'<form method="post" action="{h(base)}/jobs/bulk/{h(action)}" id="confirm">'
                f'<input type="hidden" name="{CSRF_FIELD}" value="{TOKEN_SLOT}">'
                f'<input type="hidden" name="ids" value="{h(ids)}">'
                f'<input type="hidden" name="back" value="{h(back_query)}">'
                f'<button type="submit" data-action="confirm">{h(label)} {count:,} {noun}'
                f'</button> <a href="{h(back)}" id="back">Back to the list, doing nothing</a>'
                "</form>"
            )
        else:
            parts.append(
                f'<p id="nothing">Nothing to do. <a href="{h(back)}" id="back">Back to the '
                "list</a></p>"
            )
        rows = [
            f'<tr data-job-id="{h(j["id"])}"><td>{job_link(base, j["id"])}</td>'
            f"<td>{h(j['job_type'])}</td><td>{badge_html(j['status'])}</td>"
            f"<td>{when_html(j['created_at'])}</td><td>{when_html(j['run_after'])}</td></tr>"
            for j in jobs[:SHOWN]
        ]
        parts.append(table_html(("id", "type", "status", "created", "due"), rows, ""))
        if count > SHOWN:
            others = ", ".join(str(j["id"]) for j in jobs[SHOWN:])
            parts.append(f'<p id="others">And these {count - SHOWN:,}: {h(others)}.</p>')
        return "".join(parts)

    async def route_bulk(self, request: Request) -> Response:
        refused = await self.check_action(request)
        if refused is not None:
            return refused
        action = request.path_params["action"]
        if action not in BULK_ACTIONS:
            return refuse(404, f'No bulk action "{action}": use {", ".join(BULK_ACTIONS)}.')
        form = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
        texts = [t for t in form.get("ids", "").split(",") if t]
        if not texts or not all(DIGITS.fullmatch(t) and 0 < int(t) <= MAX_ID for t in texts):
            return refuse(400, "No jobs named: the form's ids are job ids, comma-separated.")
        ids = sorted({int(t) for t in texts})
        if len(ids) > BULK_LIMIT:
            return refuse(400, f"{len(ids):,} jobs named: at most {BULK_LIMIT:,} at once.")
        try:
            if action == "retry":
                moved = await self.store.retry_many(ids)
            elif action == "cancel":
                moved = await self.store.cancel_many(ids)
            else:
                moved = await self.store.run_now_many(ids)
        except JobConflict as exc:
            return refuse(409, str(exc))
        back = ListFilter.from_query(QueryParams(form.get("back", ""))).query()
        query = {
            **back,
            "done": action,
            "moved": str(len(moved)),
            "missed": str(len(ids) - len(moved)),
        }
        return RedirectResponse(f"{self.base(request)}/jobs?{urlencode(query)}", status_code=303)
