"""What every page of the web dashboard shares: the frame around its content (header,
notice, stylesheet and script), the CSRF token in its cookie, and the forms of its
actions with their checks. Each page (``OverviewPage``, ``JobsListPage``, ``JobPage``)
is a ``DashboardPage``."""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import parse_qs, urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from pqrun._ui.web_html import SECURITY_HEADERS, h, refuse
from pqrun.store import PgJobStore

CSRF_COOKIE = "pqrun_csrf"
CSRF_FIELD = "csrf_token"
# Stands for the CSRF token in rendered HTML until the response fills it in. A NUL
# cannot come from the database (text and JSON hold none), so no value can forge it.
TOKEN_SLOT = "\x00csrf\x00"

READ_ONLY = (
    "Actions are disabled: this dashboard is read-only. Mount it with "
    "pqrun.dashboard(store, allow_actions=True) (or pqrun dashboard "
    "--allow-actions) to retry and cancel jobs, and pause job types, from it."
)

NOTICES = {
    "retried": "The job is READY again.",
    "not-retried": "Not retried: only FAILED or CANCELLED jobs can be retried.",
    "cancelled": "The job is CANCELLED.",
    "not-cancelled": "Not cancelled: only READY or RUNNING jobs can be cancelled.",
    "conflict": "Not retried: another active job holds the same dedupe_key.",
    "ran-now": "The job is due now.",
    "not-ran-now": "Not made due now: only a READY job due later can be run now.",
    "paused": (
        "The job type is paused: no worker claims its READY jobs until it is resumed. "
        "Jobs already running finish."
    ),
    "not-paused": "Not paused again: the job type was paused already (see since when, and why).",
    "resumed": "The job type is resumed: the workers are woken to claim its jobs.",
    "not-resumed": "Not resumed: the job type was not paused.",
    "bad-id": "That is not a job id: a job's id is a whole number (see the list below).",
}


class DashboardPage:
    """The frame of every dashboard page and fragment, and the guard of every action."""

    def __init__(self, store: PgJobStore, *, allow_actions: bool, title: str) -> None:
        self.store = store
        self.allow_actions = allow_actions
        self.title = title

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
        response = HTMLResponse(body, headers=SECURITY_HEADERS)
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
        notice_html = f'<p class="notice" id="notice">{h(notice)}</p>' if notice else ""
        body = (
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{h(heading)} - {h(self.title)}</title>"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<link rel="icon" href="data:,">'
            f'<link rel="stylesheet" href="{h(base)}/_/app.css"></head><body>'
            f'<header><b>{h(self.title)}</b><a href="{h(base)}/">Overview</a>'
            f'<a href="{h(base)}/jobs">Jobs</a>'
            f'<form method="get" action="{h(base)}/jobs" class="jump" id="jump">'
            '<input name="id" inputmode="numeric" placeholder="job id" aria-label="job id" '
            'size="10"> <button type="submit">Go</button></form>'
            f"{mode}</header>"
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

    async def check_action(self, request: Request) -> Response | None:
        """Refuse an action unless allowed, same-origin and carrying the cookie's token."""
        if not self.allow_actions:
            return refuse(403, READ_ONLY)
        # Host against host only: behind a proxy that ends TLS the scheme differs.
        origin = request.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
            return refuse(403, "Refused: the request came from another site.")
        cookie = request.cookies.get(CSRF_COOKIE, "")
        body = (await request.body())[:4096].decode("utf-8", "replace")
        sent = parse_qs(body).get(CSRF_FIELD, [""])[0]
        if not cookie or not hmac.compare_digest(cookie.encode(), sent.encode()):
            return refuse(
                403,
                "Refused: the form's CSRF token is missing or does not match this "
                "browser's. Reload the page and try again.",
            )
        return None

    def after_action(self, request: Request, path: str, notice: str) -> Response:
        return RedirectResponse(f"{self.base(request)}{path}?notice={notice}", status_code=303)
