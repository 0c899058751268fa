"""The three timing policies of a worker. Subclass one and override its method to change it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

DEFAULT_RETRY_DELAYS: tuple[timedelta, ...] = (
    timedelta(minutes=1),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=6),
)


class BackoffPolicy:
    """How long a job waits before its next attempt after its handler raised.

    ``retry_delay(attempts)`` gets the number of attempts made so far (1 after the first
    failure). The default waits 1m, 5m, 30m, 2h, then 6h for every later attempt.
    """

    def __init__(self, delays: Sequence[timedelta] = DEFAULT_RETRY_DELAYS) -> None:
        if not delays:
            raise ValueError("BackoffPolicy(delays=...) needs at least one delay")
        if any(not isinstance(d, timedelta) or d < timedelta(0) for d in delays):
            raise ValueError(f"BackoffPolicy delays must be timedeltas >= 0, got {delays!r}")
        self.delays = tuple(delays)

    def retry_delay(self, attempts: int) -> timedelta:
        index = min(max(attempts, 1), len(self.delays)) - 1
        return self.delays[index]


class _DoublingDelay:
    """A wait that starts at ``base_seconds`` and doubles with each repeat, up to a cap."""

    def __init__(self, base_seconds: float, max_seconds: float) -> None:
        if base_seconds <= 0 or max_seconds < base_seconds:
            raise ValueError(
                f"{type(self).__name__} needs 0 < base_seconds <= max_seconds, "
                f"got base_seconds={base_seconds}, max_seconds={max_seconds}"
            )
        self.base_seconds = float(base_seconds)
        self.max_seconds = float(max_seconds)

    def _delay(self, repeats: int) -> float:
        doublings = min(max(repeats, 1) - 1, 30)
        return float(min(self.base_seconds * 2**doublings, self.max_seconds))


class IdlePollPolicy(_DoublingDelay):
    """How long an idle worker waits before it looks for due jobs again.

    The first empty poll waits ``base_seconds``; each further one in a row doubles the
    wait, up to ``max_seconds``. A job found resets it.
    """

    def __init__(self, base_seconds: float = 1.0, max_seconds: float = 10.0) -> None:
        super().__init__(base_seconds, max_seconds)

    def next_sleep(self, consecutive_idle: int) -> float:
        return self._delay(consecutive_idle)


class LoopErrorPolicy(_DoublingDelay):
    """How long the worker waits after a database error in its own loop (not a handler's).

    ``next_sleep(consecutive_errors)`` gets 1 for the first error of a streak. The default
    waits 0.5s, then doubles up to 30s, so a database outage never turns into a busy loop.
    """

    def __init__(self, base_seconds: float = 0.5, max_seconds: float = 30.0) -> None:
        super().__init__(base_seconds, max_seconds)

    def next_sleep(self, consecutive_errors: int) -> float:
        return self._delay(consecutive_errors)
