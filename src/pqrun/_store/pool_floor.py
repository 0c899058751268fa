"""asyncpg's pool logs a traceback at each try to reconnect its floor: one DEBUG line."""

from __future__ import annotations

import logging


class _PoolFloorFilter(logging.Filter):
    """Turn asyncpg's "Failed to restore the pool connection floor" into one DEBUG line.

    During an outage asyncpg's pool tries to reconnect its ``min_size`` connections in
    the background and logs a WARNING with a full traceback at each try (1 s, 2 s, ...
    up to a minute apart). pqrun already logs one ERROR line when the database becomes
    unreachable and one when it works again; the tracebacks say nothing more. A filter
    rather than ``min_size=0``: the floor keeps a warm connection, which is worth having,
    and a user's own ``min_size`` would bring the tracebacks back. The record is kept at
    DEBUG (shown only where asyncpg's logger is set to DEBUG), without the traceback but
    with the error's one-line summary. asyncpg's logger is one per process, so this
    applies to every asyncpg pool in a process that uses pqrun.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and str(record.msg).startswith(
            "Failed to restore the pool connection floor"
        ):
            error = record.exc_info[1] if record.exc_info else None
            if error is not None:
                record.msg = f"{record.msg} ({type(error).__name__}: {error})"
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            # Handlers check their own level, not the logger's: decide here, as the
            # logger would have for a DEBUG record.
            return logging.getLogger("asyncpg.pool").isEnabledFor(logging.DEBUG)
        return True


_POOL_FLOOR_FILTER = _PoolFloorFilter()


def quiet_pool_floor_warnings() -> None:
    """Install the filter on asyncpg's pool logger (once per process)."""
    pool_logger = logging.getLogger("asyncpg.pool")
    if _POOL_FLOOR_FILTER not in pool_logger.filters:
        pool_logger.addFilter(_POOL_FLOOR_FILTER)
