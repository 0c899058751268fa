"""Worker settings: a constructor argument wins, then the environment, then the default."""

from __future__ import annotations

import os
from datetime import timedelta

TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off", ""}


def env_bool(name: str, given: bool | None, default: bool) -> bool:
    if given is not None:
        return given
    raw = os.environ.get(name)
    if raw is None:
        return default
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"{name}={raw!r} is not a boolean; use true or false")


def env_int(name: str, given: int | None, default: int, minimum: int = 1) -> int:
    value: int
    if given is not None:
        if isinstance(given, bool) or not isinstance(given, int):
            raise TypeError(f"{name.lower()} must be an int, got {given!r}")
        value = given
    else:
        raw = os.environ.get(name)
        if raw is None or not raw.strip():
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise ValueError(f"{name} (or its argument) must be at least {minimum}, got {value}")
    return value


def env_duration(name: str, given: timedelta | float | None, default: timedelta) -> timedelta:
    """A duration given as a timedelta or seconds, or read from ``name`` in seconds."""
    value: timedelta
    if given is not None:
        if isinstance(given, timedelta):
            value = given
        elif isinstance(given, int | float) and not isinstance(given, bool):
            value = timedelta(seconds=given)
        else:
            raise TypeError(f"{name.lower()} must be a timedelta or seconds, got {given!r}")
    else:
        raw = os.environ.get(name)
        if raw is None or not raw.strip():
            return default
        try:
            value = timedelta(seconds=float(raw))
        except ValueError:
            raise ValueError(f"{name}={raw!r} is not a number of seconds") from None
    if value < timedelta(0):
        raise ValueError(f"{name} (or its argument) must not be negative, got {value}")
    return value
