"""The dashboard's page of one job type: its jobs now (READY, scheduled, RUNNING), what
the workers ran of it in the last hour and day (done, failed, retried, failure rate, run
time p50/p95), and charts of its throughput, failures and READY jobs, per minute over
the hour and per 15 minutes over the day. Whether the type is paused (since when, why),
with Pause and Resume buttons when actions are allowed.

All but the jobs now comes from the rollup the workers write (``job_type_minutes``, a
row per type per minute): one read of at most two rows per minute of the day, whatever
the size of the jobs table. The jobs now are the overview's capped counts
(``queue_stats``), read at most once a second however many browsers watch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode

from starlette.requests import Request
from starlette.responses import Response

from pqrun._store.inspection import STATUS_COUNT_CAP
from pqrun._store.type_minutes import RUN_MS_BOUNDS, TypeSlots
from pqrun._ui.web_charts import Bar, bar_chart
from pqrun._ui.web_html import age_text, h, path_segment, refuse, table_html, when_html
from pqrun._ui.web_page import CSRF_FIELD, TOKEN_SLOT, DashboardPage
from pqrun.store import PgJobStore

#: How often the page refreshes its numbers and charts (milliseconds): the rollup
#: changes every ten seconds.
TYPE_REFRESH_MS = 10_000
#: The jobs now are read at most this often, or this many times as long as it took.
ACTIVE_CACHE_SECONDS = 1.0
ACTIVE_COST_FACTOR = 10.0
#: The last hour by the minute, and the last day by the quarter hour.
SPANS = ((timedelta(minutes=1), 60), (timedelta(minutes=15), 96))
# A job type is never empty (the jobs table refuses it); '' is the whole queue's row.
NO_TYPE = "No job type: the page of a job type is /types/<job type>."
#: A pause's reason is read from this much of the form at most (1,000 characters,
#: each up to 4 bytes of UTF-8 written as %XX).
PAUSE_FORM_BYTES = 16_384


def bound_text(ms: int) -> str:
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms // 1000} s"
    if ms < 3_600_000:
        return f"{ms // 60_000} min"
    return f"{ms // 3_600_000} h"


def quantile_text(buckets: Sequence[int], share: float) -> str:
    """The run time under which ``share`` of the runs fell, as the bound of its bucket
    ("<= 50 ms"), or "-" without runs."""
    total = sum(buckets)
    if not total:
        return "-"
    wanted = share * total
    seen = 0
    for index, count in enumerate(buckets):
        seen += count
        if seen >= wanted and count:
            if index >= len(RUN_MS_BOUNDS):
                return f"> {bound_text(RUN_MS_BOUNDS[-1])}"
            return f"<= {bound_text(RUN_MS_BOUNDS[index])}"
    return "-"


def rate_text(failed: int, done: int) -> str:
    """Failed runs among the finished ones (done + failed), as a percentage."""
    if not failed + done:
        return "-"
    return f"{100 * failed / (failed + done):.1f}%"


class TypePage(DashboardPage):
    """``/types/{job_type}`` and its live fragment ``/_/types/{job_type}``."""

    def __init__(self, store: PgJobStore, *, allow_actions: bool, title: str) -> None:
        super().__init__(store, allow_actions=allow_actions, title=title)
        self._active: tuple[float, list[dict[str, Any]]] | None = None

    async def active(self) -> list[dict[str, Any]]:
        """READY, due and RUNNING jobs per type (capped), read at most once a second."""
        now = time.monotonic()
        if self._active is not None and now < self._active[0]:
            return self._active[1]
        queues = await self.store.queue_stats(count_cap=STATUS_COUNT_CAP)
        took = time.monotonic() - now
        keep = max(ACTIVE_CACHE_SECONDS, ACTIVE_COST_FACTOR * took)
        self._active = (now + took + keep, queues)
        return queues

    async def type_fragment(self, request: Request, job_type: str) -> str:
        base = self.base(request)
        queues = await self.active()
        hour, day = await self.store.type_slots(job_type, SPANS)
        mine = next((q for q in queues if q["job_type"] == job_type), None)
        ready, due, running = (mine["ready"], mine["due"], mine["running"]) if mine else (0, 0, 0)
        capped = sum(q["ready"] for q in queues) >= STATUS_COUNT_CAP
        at_least = "≥" if capped else ""
        waits = age_text(mine["oldest_due_seconds"]) if mine else "-"
        listing = f"{base}/jobs?{urlencode({'job_type': job_type})}"
        failed_list = f"{base}/jobs?{urlencode({'status': 'FAILED', 'job_type': job_type})}"
        now_cards = (
            card("ready-due", "READY, due now", f"{at_least}{due:,}")
            + card("scheduled", "READY, scheduled", f"{at_least}{ready - due:,}")
            + card("running", "RUNNING", f"{running:,}")
            + card("oldest-due", "oldest due waits", waits)
        )
        ran = ""
        for name, span in (("hour", hour), ("day", day)):
            done, failed, retried = sum(span.done), sum(span.failed), sum(span.retried)
            mean = f"{span.run_ms_sum / span.runs:,.0f} ms" if span.runs else "-"
            ran += (
                f"<h2>Last {'hour' if name == 'hour' else '24 hours'}</h2>"
                f'<div class="cards" id="{name}-counts">'
                + card(f"{name}-done", "done", f"{done:,}")
                + card(f"{name}-failed", "failed", f"{failed:,}")
                + card(f"{name}-retried", "retried", f"{retried:,}")
                + card(f"{name}-rate", "failure rate", rate_text(failed, done))
                + card(f"{name}-p50", "run time p50", quantile_text(span.run_ms_buckets, 0.5))
                + card(f"{name}-p95", "run time p95", quantile_text(span.run_ms_buckets, 0.95))
                + card(f"{name}-mean", "mean run time", mean)
                + f'</div><div class="charts">{charts(name, span)}</div>'
                + numbers_table(name, span)
            )
        note = (
            '<p class="muted">Counted from the READY jobs of all types up to '
            f"{STATUS_COUNT_CAP:,}: the counts are at least these.</p>"
            if capped
            else ""
        )
        depth_note = (
            '<p class="muted">Some READY samples stopped at '
            f"{STATUS_COUNT_CAP:,} jobs of all types: those are at least what they show.</p>"
            if day.capped
            else ""
        )
        return (
            f'<div class="cards" id="type-now">{now_cards}</div>{note}'
            f'<p><a href="{h(listing)}">{h(job_type)} jobs</a> · '
            f'<a href="{h(failed_list)}">failed ones</a></p>{ran}{depth_note}'
            '<p class="muted">Runs are counted by the workers that ran them, as their '
            "outcomes are written (every 10 s): done, failed, and retried (back to READY "
            "after an error). Jobs finished by SQL, cancel() or the reaper are not counted. "
            "Run times are bucketed: p50 &lt;= 50 ms means half the runs took at most "
            "50 ms. Failure rate: failed / (done + failed). Times are UTC.</p>"
        )

    async def pause_html(self, request: Request, job_type: str) -> str:
        """Whether the type is paused (since when, why), and the button that changes
        it. Outside the live part, so that a reason being typed is not swept away."""
        paused = await self.store.paused_types()
        pause = next((p for p in paused if p["job_type"] == job_type), None)
        path = f"/types/{path_segment(job_type)}"
        if pause is not None:
            reason = f": {h(pause['reason'])}" if pause["reason"] else ""
            return (
                '<div id="pause"><p id="paused-state"><span class="badge s-paused">paused'
                f"</span> since {when_html(pause['paused_at'], absolute=True)}"
                f'{reason}</p><p class="muted">No worker claims its READY jobs until it is '
                "resumed; jobs already running finish.</p>"
                f"{self.action_button(request, f'{path}/resume', 'Resume')}</div>"
            )
        if not self.allow_actions:
            return ""
        return (
            f'<div id="pause"><form class="inline" method="post" '
            f'action="{h(self.base(request) + path)}/pause">'
            f'<input type="hidden" name="{CSRF_FIELD}" value="{TOKEN_SLOT}">'
            '<input name="reason" maxlength="1000" placeholder="reason (optional)" '
            'aria-label="reason for the pause"> '
            '<button type="submit" data-action="pause">Pause</button></form> '
            '<span class="muted">stops every worker claiming this type\'s jobs, until '
            "resumed</span></div>"
        )

    async def route_type(self, request: Request) -> Response:
        job_type = request.path_params["job_type"]
        if not job_type:
            return refuse(404, NO_TYPE)
        content = await self.type_fragment(request, job_type)
        live = f"{self.base(request)}/_/types/{path_segment(job_type)}"
        return self.page(
            request,
            f"Job type {job_type}",
            f'<h2>Job type <span id="job-type">{h(job_type)}</span></h2>'
            f"{await self.pause_html(request, job_type)}"
            f'<div id="type" data-live="{h(live)}" data-every="{TYPE_REFRESH_MS}">'
            f"{content}</div>",
        )

    async def acted_on(self, request: Request) -> str | Response:
        """The job type a pause or resume POST names, or the answer refusing it."""
        refused = await self.check_action(request)
        if refused is not None:
            return refused
        job_type: str = request.path_params["job_type"]
        return job_type or refuse(404, NO_TYPE)

    async def route_pause(self, request: Request) -> Response:
        job_type = await self.acted_on(request)
        if isinstance(job_type, Response):
            return job_type
        body = (await request.body())[:PAUSE_FORM_BYTES].decode("utf-8", "replace")
        reason = parse_qs(body).get("reason", [""])[0].strip() or None
        try:
            paused = await self.store.pause(job_type, reason=reason)
        except ValueError as exc:
            return refuse(400, f"Not paused: {exc}")
        notice = "paused" if paused else "not-paused"
        return self.after_action(request, f"/types/{path_segment(job_type)}", notice)

    async def route_resume(self, request: Request) -> Response:
        job_type = await self.acted_on(request)
        if isinstance(job_type, Response):
            return job_type
        notice = "resumed" if await self.store.resume(job_type) else "not-resumed"
        return self.after_action(request, f"/types/{path_segment(job_type)}", notice)

    async def route_type_fragment(self, request: Request) -> Response:
        job_type = request.path_params["job_type"]
        if not job_type:
            return refuse(404, NO_TYPE)
        return self.fragment(request, await self.type_fragment(request, job_type))


def card(card_id: str, label: str, value: str) -> str:
    return f'<div class="card" id="{h(card_id)}">{h(label)}<b>{h(value)}</b></div>'


def slot_label(start: datetime) -> str:
    return start.strftime("%H:%M")


def charts(name: str, span: TypeSlots) -> str:
    """Throughput, failures and READY jobs of one window, as three bar charts."""
    minutes = (span.starts[1] - span.starts[0]) // timedelta(minutes=1)
    unit = "minute" if minutes == 1 else f"{minutes} minutes"
    labels = [slot_label(start) for start in span.starts]
    first, last = labels[0], slot_label(span.starts[-1] + timedelta(minutes=minutes))
    period = f"from {first} to {last} UTC"

    def described(what: str, values: Sequence[int | None], *, summed: bool = True) -> str:
        known = [(v, label) for v, label in zip(values, labels, strict=True) if v is not None]
        if not known:
            return f"{what} per {unit} {period}: no samples."
        peak, when = max(known, key=lambda pair: pair[0])
        missing = len(values) - len(known)
        gaps = f"; no sample in {missing} of them" if missing else ""
        total = f"{sum(v for v, _ in known):,} in all, " if summed else ""
        return f"{what} per {unit} {period}: {total}at most {peak:,} (at {when}){gaps}."

    done = [Bar(label, value) for label, value in zip(labels, span.done, strict=True)]
    failed = [Bar(label, value) for label, value in zip(labels, span.failed, strict=True)]
    depth = [Bar(label, value) for label, value in zip(labels, span.depth, strict=True)]
    most = "" if minutes == 1 else " (most)"
    return (
        bar_chart(
            f"{name}-throughput",
            f"Done per {unit}",
            described("Runs done", span.done),
            done,
            "ch-done",
        )
        + bar_chart(
            f"{name}-failures",
            f"Failed per {unit}",
            described("Runs failed", span.failed),
            failed,
            "ch-failed",
        )
        + bar_chart(
            f"{name}-depth",
            f"READY jobs{most}",
            described(f"READY jobs{most}, sampled each minute,", span.depth, summed=False),
            depth,
            "ch-depth",
        )
    )


def numbers_table(name: str, span: TypeSlots) -> str:
    """The charts' numbers, as a table (folded away), newest first."""
    rows = [
        f'<tr><td>{h(slot_label(start))}</td><td class="num">{done:,}</td>'
        f'<td class="num">{failed:,}</td><td class="num">{retried:,}</td>'
        f'<td class="num">{"-" if depth is None else f"{depth:,}"}</td></tr>'
        for start, done, failed, retried, depth in reversed(
            list(zip(span.starts, span.done, span.failed, span.retried, span.depth, strict=True))
        )
    ]
    table = table_html(["from (UTC)", "#done", "#failed", "#retried", "#READY"], rows, "")
    return f'<details id="{h(name)}-numbers"><summary>The numbers</summary>{table}</details>'
