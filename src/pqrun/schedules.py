"""Recurring jobs: ``Schedule`` declarations and when their ticks fall.

A worker that declares schedules keeps their rows in ``job_schedules`` up to date and
fires the due ones (store.fire_due_schedules): each tick is enqueued once, however many
workers run. docs/scheduling.md describes the whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from ._json_encoding import DEFAULT_ENCODING, JSONEncoding, Unencodable
from .limits import check_text, check_timeout_seconds, encode_payload

#: The usual shortcuts, as cron expressions.
CRON_SHORTCUTS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

# A tick found due more than this late (or more than one period late, if shorter) was
# missed while no worker ran: Schedule(missed="skip") does not enqueue it.
MISSED_AFTER = timedelta(minutes=1)


@dataclass(frozen=True)
class Schedule:
    """A job enqueued on a schedule: ``Schedule("cleanup", cron="0 3 * * *")`` or
    ``Schedule("sync", every=timedelta(minutes=5))``.

    - ``cron``: five fields or a shortcut (``@hourly``, ``@daily``, ``@weekly``,
      ``@monthly``, ``@yearly``), read in ``timezone`` (default UTC; an IANA name such as
      ``"Europe/Paris"``). Across a DST change a tick in the repeated hour fires once,
      and one in the skipped hour fires when the clock jumps past it.
    - ``every``: a timedelta or seconds, counted from the first declaration.
    - ``name``: the schedule's identity in the database (default: the job type); give
      one to have two schedules of one job type.
    - ``missed``: a tick that came due while no worker ran is enqueued once when one
      starts (``"once"``, the default) or not at all (``"skip"``); never once per
      missed tick.

    ``payload``, ``priority``, ``max_attempts`` and ``timeout_seconds`` go to each job.
    """

    job_type: str
    cron: str | None = None
    every: timedelta | float | None = None
    payload: Any = None
    name: str = ""
    timezone: str = "UTC"
    priority: int = 0
    max_attempts: int = 5
    timeout_seconds: int | timedelta | None = None
    missed: Literal["once", "skip"] = "once"
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)
    _expression: str | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.job_type, str) or not self.job_type:
            raise ValueError(f"Schedule needs a job type, got {self.job_type!r}")
        check_text("Schedule job_type", self.job_type)
        if not self.name:
            object.__setattr__(self, "name", self.job_type)
        if (self.cron is None) == (self.every is None):
            raise ValueError(
                f"Schedule {self.name!r}: give either cron='0 3 * * *' or "
                "every=timedelta(minutes=5), not both or neither"
            )
        try:
            zone = ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise ValueError(
                f"Schedule {self.name!r}: unknown timezone {self.timezone!r}; use an IANA "
                "name such as 'UTC' or 'Europe/Paris'"
            ) from None
        object.__setattr__(self, "_zone", zone)
        expression = None
        if self.cron is not None:
            if not isinstance(self.cron, str):
                raise ValueError(
                    f"Schedule {self.name!r}: cron must be a string, got {self.cron!r}"
                )
            expression = CRON_SHORTCUTS.get(self.cron.strip().lower(), self.cron)
            try:
                CronSim(expression, datetime.now(zone))
            except (CronSimError, ValueError) as exc:
                raise ValueError(
                    f"Schedule {self.name!r}: bad cron expression {self.cron!r}: {exc}; "
                    "give five fields (minute hour day-of-month month day-of-week) or "
                    f"one of {', '.join(CRON_SHORTCUTS)}"
                ) from None
        else:
            every = self.every
            if isinstance(every, int | float) and not isinstance(every, bool):
                every = timedelta(seconds=every)
            if not isinstance(every, timedelta) or every <= timedelta(0):
                raise ValueError(
                    f"Schedule {self.name!r}: every must be a positive timedelta or "
                    f"seconds, got {self.every!r}"
                )
            object.__setattr__(self, "every", every)
        object.__setattr__(self, "_expression", expression)
        for name, low in (("priority", -(2**31) + 1), ("max_attempts", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value < 2**31:
                raise ValueError(
                    f"Schedule {self.name!r}: {name} must be an int >= {low}, got {value!r}"
                )
        try:
            timeout = check_timeout_seconds(self.timeout_seconds)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"Schedule {self.name!r}: {exc}") from None
        object.__setattr__(self, "timeout_seconds", timeout)
        if self.missed not in ("once", "skip"):
            raise ValueError(
                f"Schedule {self.name!r}: missed must be 'once' or 'skip', got {self.missed!r}"
            )
        # Checked as enqueue checks it, so a bad payload fails here, not at every tick.
        try:
            self.encoded_payload()
        except Unencodable as exc:
            # An object a store's json_encoder may convert (a datetime): Worker(...)
            # checks it with its store's encoder.
            if not exc.convertible:
                raise

    @property
    def every_seconds(self) -> float | None:
        """The interval in seconds, for an ``every`` schedule."""
        return self.every.total_seconds() if isinstance(self.every, timedelta) else None

    @property
    def payload_json(self) -> str:
        """The payload as JSON text, plain JSON only (see ``encoded_payload``)."""
        return self.encoded_payload()

    def encoded_payload(self, encoding: JSONEncoding = DEFAULT_ENCODING) -> str:
        """The payload as JSON text, encoded as the store (its ``json_encoder``) does."""
        return encode_payload(self.payload, f"schedule {self.name!r}'s payload", encoding)

    def first_tick(self, now: datetime) -> datetime:
        """The first tick of a schedule declared at ``now``: nothing fires at declaration."""
        if self.every_seconds is not None:
            return now + timedelta(seconds=self.every_seconds)
        return self.tick_after(now)

    def tick_after(self, moment: datetime) -> datetime:
        """The first cron tick strictly after ``moment`` (an aware datetime)."""
        assert self._expression is not None
        # cronsim works on the wall clock: started inside a repeated DST hour it can
        # return a tick that is, in absolute time, before its start. Skip those.
        # Ticks are returned in UTC: Python never finds a time inside a repeated hour
        # equal to the same instant in another zone (PEP 495), which would surprise.
        for tick in CronSim(self._expression, moment.astimezone(self._zone)):
            if tick > moment:
                return tick.astimezone(UTC)
        raise ValueError(f"cron expression {self.cron!r} has no future tick")  # pragma: no cover

    def next_tick(self, due: datetime, now: datetime) -> datetime:
        """The tick after the one due at ``due``, fired at ``now``: the first after ``now``.

        Ticks between ``due`` and ``now`` were missed; none of them is enqueued.
        """
        if self.every_seconds is not None:
            every = timedelta(seconds=self.every_seconds)
            periods = max(1, int((now - due) / every) + 1)
            return due + periods * every
        return self.tick_after(max(due, now))

    def was_missed(self, due: datetime, now: datetime) -> bool:
        """True when the tick due at ``due`` is too late to count as on time at ``now``."""
        if self.every_seconds is not None:
            period = timedelta(seconds=self.every_seconds)
        else:
            period = self.tick_after(due) - due
        return now - due > min(MISSED_AFTER, period)
