"""The web dashboard: queues, jobs, workers and schedules, with opt-in actions.

Mount it in your app (``pip install 'pqrun[web]'``)::

    app.mount("/jobs", pqrun.dashboard(store))                      # read-only
    app.mount("/jobs", pqrun.dashboard(store, allow_actions=True))  # retry, cancel, pause

or run it alone: ``pqrun dashboard --port 8080``. It has no login of its own: mount it
behind your app's authentication. With ``allow_actions=True`` every action is a POST
carrying a CSRF token that must match the token in the dashboard's cookie (a
double-submit cookie, SameSite=Strict), and a cross-site Origin is refused.

Every page reads a bounded amount of the table (see ``PgJobStore.browse_jobs``,
``queue_stats`` and ``status_counts``), so it stays fast on millions of rows. Pages
refresh their live parts by polling a fragment every two seconds.

The pages live in ``pqrun._ui``: ``web_page`` (the frame, CSRF token and action checks
every page shares), ``web_overview`` (with ``web_workers`` and ``web_schedules``),
``web_jobs`` (the list and its filters, ``web_filters``), ``web_bulk`` (bulk actions
and their confirmation), ``web_job`` (one job) and ``web_type`` (one job type, with
``web_charts``). This module wires them to routes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ._ui.web_assets import CSS, JS
from ._ui.web_bulk import BulkPage
from ._ui.web_job import JobPage
from ._ui.web_jobs import JobsListPage
from ._ui.web_overview import OverviewPage
from ._ui.web_page import CSRF_COOKIE, CSRF_FIELD
from ._ui.web_type import TypePage
from .store import PgJobStore

__all__ = ["CSRF_COOKIE", "CSRF_FIELD", "dashboard"]


async def _route_css(request: Request) -> Response:
    return Response(CSS, media_type="text/css", headers={"Cache-Control": "max-age=300"})


async def _route_js(request: Request) -> Response:
    return Response(JS, media_type="text/javascript", headers={"Cache-Control": "max-age=300"})


def dashboard(store: PgJobStore, *, allow_actions: bool = False, title: str = "pqrun") -> Starlette:
    """The dashboard as a Starlette app: ``app.mount("/jobs", pqrun.dashboard(store))``.

    Read-only unless ``allow_actions=True``, which adds retry, cancel and run now, of
    one job or of many (ticked in the list, or all matching its filter, after a
    confirmation), and pausing and resuming a job type, each a POST guarded by a CSRF
    token. It has no login: mount it
    behind your app's authentication. The store's pool opens on the first request.
    """
    if not isinstance(store, PgJobStore):
        raise TypeError(f"dashboard() needs a PgJobStore, got {store!r}")
    jobs = JobsListPage(store, allow_actions=allow_actions, title=title)
    job = JobPage(store, allow_actions=allow_actions, title=title)
    bulk = BulkPage(store, allow_actions=allow_actions, title=title)
    overview = OverviewPage(store, allow_actions=allow_actions, title=title, jobs=jobs)
    job_type = TypePage(store, allow_actions=allow_actions, title=title)
    routes = [
        Route("/", overview.route_overview),
        Route("/jobs", jobs.route_jobs),
        # Before /jobs/{job_id}, which would take "confirm" and "bulk" for ids.
        Route("/jobs/confirm", bulk.route_confirm),
        Route("/jobs/bulk/{action}", bulk.route_bulk, methods=["POST"]),
        Route("/jobs/{job_id}", job.route_job),
        Route("/jobs/{job_id}/retry", job.route_retry, methods=["POST"]),
        Route("/jobs/{job_id}/cancel", job.route_cancel, methods=["POST"]),
        Route("/jobs/{job_id}/run-now", job.route_run_now, methods=["POST"]),
        Route("/types/{job_type:path}", job_type.route_type),
        # A POST only: the GET above takes ".../pause" as part of a job type's name.
        Route("/types/{job_type:path}/pause", job_type.route_pause, methods=["POST"]),
        Route("/types/{job_type:path}/resume", job_type.route_resume, methods=["POST"]),
        Route("/_/overview", overview.route_overview_fragment),
        Route("/_/jobs", jobs.route_jobs_fragment),
        Route("/_/recent", overview.route_recent_fragment),
        Route("/_/jobs/{job_id}", job.route_job_fragment),
        Route("/_/types/{job_type:path}", job_type.route_type_fragment),
        Route("/_/app.css", _route_css),
        Route("/_/app.js", _route_js),
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
