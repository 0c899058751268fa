"""The dashboard's overview: totals by status, rates, queues, workers and schedules,
read at most once a second however many browsers watch, and the recent jobs."""

from __future__ import annotations

import time
from collections import deque
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from pqrun._store.inspection import STATUS_COUNT_CAP
from pqrun._ui.formatting import count_text
from pqrun._ui.web_html import (
    STATUSES,
    age_text,
    badge_html,
    h,
    paused_badge,
    table_html,
    type_link,
)
from pqrun._ui.web_jobs import JobsListPage
from pqrun._ui.web_page import DashboardPage
from pqrun._ui.web_schedules import schedules_table
from pqrun._ui.web_workers import workers_table
from pqrun.store import PgJobStore

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
#: Jobs the overview lists under "Recent jobs".
RECENT_JOBS = 12


class OverviewPage(DashboardPage):
    """``/`` and its live fragments ``/_/overview`` and ``/_/recent``."""

    def __init__(
        self, store: PgJobStore, *, allow_actions: bool, title: str, jobs: JobsListPage
    ) -> None:
        super().__init__(store, allow_actions=allow_actions, title=title)
        self.jobs = jobs
        self._overview: tuple[float, dict[str, Any]] | None = None
        # (monotonic time, newest id): the enqueue rate comes from its changes.
        self._samples: deque[tuple[float, int]] = deque()

    async def overview_data(self) -> dict[str, Any]:
        now = time.monotonic()
        if self._overview is not None and now < self._overview[0]:
            return self._overview[1]
        queues = await self.store.queue_stats(count_cap=STATUS_COUNT_CAP)
        counts = await self.store.status_counts()
        # The Queues table counts READY and RUNNING jobs exactly up to its cap, further
        # than the totals do: the cards show the same numbers as the table then.
        for status, column in (("READY", "ready"), ("RUNNING", "running")):
            total = sum(q[column] for q in queues)
            if not counts[status]["exact"] and total < STATUS_COUNT_CAP:
                counts[status] = {"count": total, "exact": True}
        newest = await self.store.max_job_id()
        failed = await self.store.failed_by_type()
        finished = await self.store.finished_per_second()
        workers = await self.store.list_workers()
        schedules = await self.store.list_schedules()
        paused = {p["job_type"]: p for p in await self.store.paused_types()}
        # Types whose jobs failed in the last hour, active or not (all failed: a row too),
        # and paused types, with jobs or without.
        for queue in queues:
            queue["failed"] = failed.pop(queue["job_type"], 0)
        queues += [
            {"job_type": t, "ready": 0, "due": 0, "running": 0, "waiting": 0,
             "oldest_due_seconds": None, "failed": n}
            for t, n in failed.items()
        ]  # fmt: skip
        listed = {queue["job_type"] for queue in queues}
        queues += [
            {"job_type": t, "ready": 0, "due": 0, "running": 0, "waiting": 0,
             "oldest_due_seconds": None, "failed": 0}
            for t in paused if t not in listed
        ]  # fmt: skip
        for queue in queues:
            queue["paused"] = paused.get(queue["job_type"])
        queues.sort(key=lambda queue: queue["job_type"])
        data = {
            "queues": queues,
            "counts": counts,
            "exact": all(entry["exact"] for entry in counts.values()),
            "enqueued": self.enqueued_rate(now, newest),
            "finished": finished,
            "workers": workers,
            "schedules": schedules,
        }
        took = time.monotonic() - now
        keep = max(OVERVIEW_CACHE_SECONDS, OVERVIEW_COST_FACTOR * took)
        self._overview = (now + took + keep, data)  # (good until, data)
        return data

    def enqueued_rate(self, now: float, newest: int) -> float | None:
        """Jobs enqueued per second since the oldest sample in the window (new ids), if
        a sample a second old or more is at hand."""
        samples = self._samples
        samples.append((now, newest))
        while samples and now - samples[0][0] > RATE_WINDOW_SECONDS:
            samples.popleft()
        then, old_newest = samples[0]
        elapsed = now - then
        if elapsed < 1.0:
            return None
        return max(newest - old_newest, 0) / elapsed

    async def overview_fragment(self, request: Request) -> str:
        data = await self.overview_data()
        base = self.base(request)
        counts: dict[str, dict[str, Any]] = data["counts"]
        cards = "".join(
            f'<div class="card"><a href="{h(base)}/jobs?status={h(status)}">'
            f"{badge_html(status)}</a><b>{h(count_text(counts[status]))}</b></div>"
            for status in STATUSES
        )
        enqueued = data["enqueued"]
        rate_cards = (
            '<div class="card">enqueued<b class="muted">measuring</b></div>'
            if enqueued is None
            else f'<div class="card">enqueued<b>{enqueued:,.1f}/s</b></div>'
        ) + (
            f'<div class="card" id="finished-rate">finished, last minute'
            f"<b>{data['finished']:,.1f}/s</b></div>"
        )
        note = (
            ""
            if data["exact"]
            else '<p class="muted">Totals over 20,000 are the planner\'s estimates (~, as '
            "of the last ANALYZE; ≥ before the first one).</p>"
        )
        queue_rows = [
            f"<tr><td>{type_link(base, q['job_type'])}{paused_badge(q['paused'])}</td>"
            f'<td class="num">{q["ready"]:,}</td><td class="num">{q["due"]:,}</td>'
            f'<td class="num">{q["running"]:,}</td><td class="num">{q["waiting"]:,}</td>'
            f'<td class="num">{failed_link(base, q)}</td>'
            f"<td>{h(age_text(q['oldest_due_seconds']))}</td></tr>"
            for q in data["queues"]
        ]
        queues = table_html(
            [
                "job type",
                "#ready",
                "#due now",
                "#running",
                "#of which waiting",
                "#failed (1 h)",
                "oldest due waits",
            ],
            queue_rows,
            "No READY or RUNNING jobs, no failures in the last hour, no paused job type.",
        )
        workers = workers_table(data["workers"])
        schedules = schedules_table(base, data["schedules"])
        return (
            f'<div class="cards" id="totals">{cards}{rate_cards}</div>{note}'
            f'<h2>Queues</h2><div id="queues">{queues}</div>'
            f'<h2>Workers</h2><div id="workers">{workers}</div>'
            f'<h2>Schedules</h2><div id="schedules">{schedules}</div>'
        )

    async def recent_fragment(self, request: Request) -> str:
        return await self.jobs.jobs_fragment(request, limit=RECENT_JOBS)

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


def failed_link(base: str, queue: dict[str, Any]) -> str:
    """The failures of the last hour of a type, linked to its failed jobs."""
    if not queue["failed"]:
        return "0"
    query = urlencode({"status": "FAILED", "job_type": queue["job_type"]})
    return f'<a href="{h(base)}/jobs?{h(query)}">{queue["failed"]:,}</a>'
