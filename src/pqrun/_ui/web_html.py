"""The HTML building blocks of the web dashboard: escaping, moments, badges, tables,
and the refusal page. Every value from the database passes through ``h()``."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from starlette.responses import HTMLResponse, Response

from pqrun._ui.formatting import relative_text
from pqrun.models import JobStatus

STATUSES = [s.value for s in JobStatus]

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def h(value: Any) -> str:
    """Escape any value for HTML text or a quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def when_html(moment: datetime | None, *, absolute: bool = False) -> str:
    """A moment as how long ago (or how soon) it is, its UTC time as the tooltip; with
    ``absolute``, the UTC time shown first (a job's page)."""
    if moment is None:
        return '<span class="muted">-</span>'
    if moment.tzinfo is None:  # a naive value from elsewhere (a schedule): read as UTC
        moment = moment.replace(tzinfo=UTC)
    age = (datetime.now(UTC) - moment).total_seconds()
    stamp = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    if absolute:
        return (
            f'<time datetime="{h(moment.isoformat())}">{h(stamp)} UTC</time> '
            f'<span class="muted">({h(relative_text(age))})</span>'
        )
    return f'<span title="{h(stamp)} UTC">{h(relative_text(age))}</span>'


def badge_html(status: str) -> str:
    return f'<span class="badge s-{h(status.lower())}">{h(status)}</span>'


def paused_badge(pause: dict[str, Any] | None) -> str:
    """The badge that follows a paused job type's name, its reason as the tooltip; ""
    for a type that is not paused (``pause`` None)."""
    if pause is None:
        return ""
    reason = pause.get("reason")
    why = f"paused: {reason}" if reason else "paused: no worker claims its jobs"
    return f' <span class="badge s-paused" title="{h(why)}">paused</span>'


def table_html(headers: Sequence[str], rows: Iterable[str], empty: str) -> str:
    body = "".join(rows)
    if not body:
        return f'<p class="muted">{h(empty)}</p>'
    # A title starting with "#" heads a column of numbers (aligned right).
    head = "".join(
        f'<th class="num">{h(title[1:])}</th>' if title.startswith("#") else f"<th>{h(title)}</th>"
        for title in headers
    )
    # In a box of its own that scrolls sideways, so a wide table never widens the page.
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def refuse(status: int, message: str) -> Response:
    return HTMLResponse(
        f"<!doctype html><title>{status}</title><p>{h(message)}</p>",
        status_code=status,
        headers=SECURITY_HEADERS,
    )


def age_text(seconds: float | None) -> str:
    """A span of time (how long a job waited) in the words of ``when_html``, no "ago"."""
    if seconds is None:
        return "-"
    return relative_text(seconds).removesuffix(" ago")


def ms_text(duration_ms: int | None) -> str:
    if duration_ms is None:
        return "-"
    return f"{duration_ms} ms" if duration_ms < 10_000 else f"{duration_ms / 1000:.1f} s"


def every_text(schedule: dict[str, Any]) -> str:
    if schedule.get("cron"):
        return f"cron {schedule['cron']}"
    if schedule.get("every_seconds"):
        return f"every {schedule['every_seconds']} s"
    return "-"


def job_link(base: str, job_id: Any) -> str:
    if job_id is None:
        return '<span class="muted">-</span>'
    return f'<a href="{h(base)}/jobs/{h(job_id)}">{h(job_id)}</a>'


def type_link(base: str, job_type: str) -> str:
    """A job type, linked to its page (web_type.py)."""
    return f'<a href="{h(base)}/types/{h(path_segment(job_type))}">{h(job_type)}</a>'


def path_segment(text: str) -> str:
    """``text`` as one segment of a URL path: a job type may hold "/" or "?"."""
    return quote(text, safe="")
