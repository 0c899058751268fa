"""The filters of the dashboard's job list, read from a URL's query and written back
into links and forms: view, status, job type, time range (a preset or UTC from/to),
and the place in the list (``before`` an id, or ``after`` a due time)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from starlette.datastructures import QueryParams

from pqrun._ui.web_html import STATUSES, h
from pqrun.store import PgJobStore

MAX_ID = 2**63 - 1
# Plain ASCII digits (str.isdigit() also takes "²", which int() refuses).
DIGITS = re.compile(r"[0-9]{1,19}")
#: The time-range presets: query value -> (label, how far back).
PRESETS = {
    "15m": ("last 15 minutes", timedelta(minutes=15)),
    "1h": ("last hour", timedelta(hours=1)),
    "1d": ("last day", timedelta(days=1)),
    "1w": ("last week", timedelta(weeks=1)),
}
VIEWS = ("", "scheduled")


@dataclass(frozen=True)
class ListFilter:
    """What the list shows: a view ("" for all jobs, "scheduled"), a status and a job
    type, jobs created within a time range (a preset, or from/to in UTC), and where in
    the list (``before`` an id; in the scheduled view, ``after`` a due time and id)."""

    view: str = ""
    status: str | None = None
    job_type: str | None = None
    preset: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before: int | None = None
    after: tuple[datetime, int] | None = None
    #: What the query asked for that is no filter (shown to the user, not ignored).
    problems: tuple[str, ...] = ()

    @classmethod
    def from_query(cls, params: QueryParams) -> ListFilter:
        problems: list[str] = []
        view = params.get("view", "")
        if view not in VIEWS:
            problems.append(f'No view "{view}": the views are all jobs and scheduled.')
            view = ""
        asked = params.get("status") or ""
        status = asked.upper() or None
        if status is not None and status not in STATUSES:
            problems.append(
                f'No status "{asked}": the statuses are {", ".join(STATUSES)}. '
                "Showing jobs of every status."
            )
            status = None
        preset = params.get("range") or None
        if preset is not None and preset not in PRESETS:
            problems.append(f'No time range "{preset}": use {", ".join(PRESETS)}.')
            preset = None
        since = moment(params.get("since", ""), "from", problems)
        until = moment(params.get("until", ""), "to", problems)
        if since is not None or until is not None:
            preset = None  # an explicit from/to wins over a preset
        before_text = params.get("before", "")
        before = min(int(before_text), MAX_ID) if DIGITS.fullmatch(before_text) else None
        after = None
        after_at = moment(params.get("after_at", ""), "after", problems)
        after_id = params.get("after_id", "")
        if after_at is not None and DIGITS.fullmatch(after_id):
            after = (after_at, min(int(after_id), MAX_ID))
        return cls(
            view=view,
            status=status,
            job_type=params.get("job_type") or None,
            preset=preset,
            since=since,
            until=until,
            before=before,
            after=after,
            problems=tuple(problems),
        )

    @property
    def timed(self) -> bool:
        return self.preset is not None or self.since is not None or self.until is not None

    def query(self, *, place: bool = False) -> dict[str, str]:
        """The filter as query parameters (with the place in the list if ``place``)."""
        query: dict[str, str] = {}
        if self.view:
            query["view"] = self.view
        if self.status:
            query["status"] = self.status
        if self.job_type:
            query["job_type"] = self.job_type
        if self.preset:
            query["range"] = self.preset
        if self.since is not None:
            query["since"] = stamp(self.since)
        if self.until is not None:
            query["until"] = stamp(self.until)
        if place and self.before is not None:
            query["before"] = str(self.before)
        if place and self.after is not None:
            query["after_at"] = self.after[0].isoformat()
            query["after_id"] = str(self.after[1])
        return query

    def hidden_inputs(self) -> str:
        """The filter as hidden form fields (a form that acts on what the list shows)."""
        return "".join(
            f'<input type="hidden" name="{h(name)}" value="{h(value)}">'
            for name, value in self.query().items()
        )

    async def id_bounds(self, store: PgJobStore) -> tuple[int, int | None]:
        """The ids [low, high) of the jobs created in the time range: two binary searches
        of the primary key at most; (0, None) without a range (high None: past the
        newest)."""
        low = 0
        high = None
        if self.preset is not None:
            low = await store.first_id_created_since(ago=PRESETS[self.preset][1])
        if self.since is not None:
            low = await store.first_id_created_since(self.since)
        if self.until is not None:
            high = await store.first_id_created_since(self.until)
        return low, high

    def range_text(self) -> str:
        """The time range in words ("" without one)."""
        if self.preset is not None:
            return f"created in the {PRESETS[self.preset][0]}"
        if self.since is not None and self.until is not None:
            return f"created from {stamp(self.since)} to {stamp(self.until)} UTC"
        if self.since is not None:
            return f"created since {stamp(self.since)} UTC"
        if self.until is not None:
            return f"created before {stamp(self.until)} UTC"
        return ""


def moment(text: str, name: str, problems: list[str]) -> datetime | None:
    """A UTC moment from a form's ``datetime-local`` field (or an ISO 8601 time with an
    offset), or None; a malformed one is named in ``problems``."""
    text = text.strip()
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        problems.append(f'"{text}" is not a time for "{name}": write it as 2026-01-31T14:05 (UTC).')
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def stamp(moment: datetime) -> str:
    """A UTC moment as a ``datetime-local`` field shows it (to the second)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
