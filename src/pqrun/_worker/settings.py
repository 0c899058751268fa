"""A worker's settings: from its keywords, else the environment, else the defaults.

Built and checked in one place (``WorkerSettings.build``), before anything else of the
worker exists; the error messages name both the keyword and the environment variable.
docs/configuration.md lists every setting.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

from pqrun._config import env_bool, env_duration, env_int
from pqrun._json_encoding import JSONEncoding
from pqrun._payloads import validate
from pqrun._store.registry import HEARTBEATS_PER_STALE_PERIOD
from pqrun.errors import PayloadInvalid
from pqrun.handlers import Handler
from pqrun.policies import BackoffPolicy, IdlePollPolicy, LoopErrorPolicy
from pqrun.schedules import Schedule

logger = logging.getLogger("pqrun")

_worker_numbers = itertools.count(1)

DEFAULT_PREFETCH_LIMIT = 1000


def default_worker_id() -> str:
    """``hostname-pid-xxxx``: four random hex digits, because a restarted container often
    has the hostname and pid of the one before it (pid 1), whose heartbeats may still
    be fresh; further workers in the same process get ``-2``, ``-3``, ... before them."""
    number = next(_worker_numbers)
    base = f"{socket.gethostname()}-{os.getpid()}"
    if number != 1:
        base = f"{base}-{number}"
    return f"{base}-{secrets.token_hex(2)}"


def encodable_schedules(schedules: Sequence[Schedule], store: object) -> Sequence[Schedule]:
    """``schedules``, once each payload is found encodable as ``store`` encodes (its
    ``json_encoder``): a datetime without an encoder is refused here, not at each tick."""
    encoding = JSONEncoding(getattr(store, "json_encoder", None))
    for schedule in schedules:
        if isinstance(schedule, Schedule):  # anything else is refused by the settings
            schedule.encoded_payload(encoding)
    return schedules


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """Everything a worker is told, checked; see docs/configuration.md."""

    handlers: dict[str, Handler]
    worker_id: str
    enabled: bool
    enable_reaper: bool
    concurrency: int
    prefetch_limit: int
    listen: bool
    metrics_port: int | None
    metrics_host: str
    default_stale_after: timedelta
    reap_interval: timedelta
    heartbeat_interval: timedelta
    shutdown_grace: timedelta
    shutdown_timeout: timedelta
    enable_pruning: bool
    prune_interval: timedelta
    keep_done: timedelta
    keep_failed: timedelta
    #: A completion deletes its job instead of writing it DONE, unless a store.wait()
    #: or dependent jobs read it (docs/operations.md#retention).
    delete_done: bool
    enable_vacuum: bool
    backoff: BackoffPolicy
    idle_policy: IdlePollPolicy
    loop_error_policy: LoopErrorPolicy
    schedules: tuple[Schedule, ...]

    @property
    def job_types(self) -> list[str]:
        return sorted(self.handlers)

    @property
    def limited(self) -> dict[str, Handler]:
        """Types whose handler has a concurrency or rate limit: claimed apart, one worker
        at a time (docs/flow-control.md); the rest in one statement."""
        return {t: h for t, h in sorted(self.handlers.items()) if h.is_limited}

    @property
    def unlimited_types(self) -> list[str]:
        return [t for t in self.job_types if not self.handlers[t].is_limited]

    @classmethod
    def build(
        cls,
        handlers: Mapping[str, Handler],
        *,
        concurrency: int | None,
        enable_reaper: bool | None,
        backoff: BackoffPolicy | None,
        idle_policy: IdlePollPolicy | None,
        loop_error_policy: LoopErrorPolicy | None,
        reap_stale_every_seconds: float | timedelta | None,
        default_stale_after: timedelta | float | None,
        worker_id: str | None,
        shutdown_grace: timedelta | float | None,
        shutdown_timeout: timedelta | float | None,
        enabled: bool | None,
        prefetch: int | None,
        listen: bool,
        schedules: Sequence[Schedule],
        enable_pruning: bool | None,
        prune_every_seconds: float | timedelta | None,
        keep_done: timedelta | float | None,
        keep_failed: timedelta | float | None,
        delete_done: bool | None,
        enable_vacuum: bool | None,
        metrics_port: int | None,
        metrics_host: str,
    ) -> WorkerSettings:
        """Check every keyword (None: from the environment, else the default).

        Raises ValueError or TypeError naming the keyword and the variable, or
        ImportError when metrics are asked for without prometheus_client.
        """
        is_enabled = env_bool("WORKER_ENABLED", enabled, True)
        if not handlers and is_enabled:
            raise ValueError(
                "Worker needs handlers to run jobs: a non-empty dict of job type -> "
                'handler, e.g. handlers={"send_email": send_email}. (A worker with none '
                "only does for an app that enqueues and runs no jobs: then disable it, "
                "Worker(store, handlers={}, enabled=False) or WORKER_ENABLED=false.)"
            )
        reaps = env_bool("WORKER_REAPER_ENABLED", enable_reaper, True)
        slots = env_int("WORKER_CONCURRENCY", concurrency, 1)
        prefetch_limit = env_int("WORKER_PREFETCH", prefetch, DEFAULT_PREFETCH_LIMIT, 0)
        port = env_int("WORKER_METRICS_PORT", metrics_port, -1, 0)
        if port >= 0:
            try:
                from pqrun import metrics  # noqa: F401  (prometheus_client is an extra)
            except ImportError as exc:
                raise ImportError(
                    f"Worker(metrics_port=...) needs prometheus_client ({exc}); "
                    "pip install 'pqrun[metrics]'"
                ) from exc
        stale_after = env_duration(
            "WORKER_STALE_TIMEOUT", default_stale_after, timedelta(seconds=30)
        )
        if stale_after <= timedelta(0):
            raise ValueError("default_stale_after / WORKER_STALE_TIMEOUT must be > 0")
        # A dead worker's jobs go back within one stale period and one reap interval of
        # its last heartbeat: a third of the stale period by default (10 s).
        reap_interval = env_duration(
            "WORKER_REAP_INTERVAL", reap_stale_every_seconds, stale_after / 3
        )
        if reap_interval <= timedelta(0):
            raise ValueError("reap_stale_every_seconds / WORKER_REAP_INTERVAL must be > 0")
        grace = env_duration("WORKER_SHUTDOWN_GRACE", shutdown_grace, timedelta(seconds=20))
        timeout = env_duration("WORKER_SHUTDOWN_TIMEOUT", shutdown_timeout, timedelta(seconds=30))
        if grace > timeout:
            raise ValueError(
                f"shutdown_grace ({grace}) must not exceed shutdown_timeout "
                f"({timeout}): the timeout bounds the whole shutdown"
            )
        prunes = env_bool("WORKER_PRUNE_ENABLED", enable_pruning, True)
        prune_interval = env_duration(
            "WORKER_PRUNE_INTERVAL", prune_every_seconds, timedelta(minutes=5)
        )
        if prune_interval <= timedelta(0):
            raise ValueError("prune_every_seconds / WORKER_PRUNE_INTERVAL must be > 0")
        kept_done = env_duration("WORKER_KEEP_DONE", keep_done, timedelta(days=1))
        kept_failed = env_duration("WORKER_KEEP_FAILED", keep_failed, timedelta(days=7))
        if worker_id is not None and (not isinstance(worker_id, str) or not worker_id):
            raise ValueError(f"worker_id must be a non-empty string, got {worker_id!r}")
        settings = cls(
            handlers=dict(handlers),
            worker_id=worker_id or default_worker_id(),
            enabled=is_enabled,
            enable_reaper=reaps,
            concurrency=slots,
            prefetch_limit=prefetch_limit,
            listen=listen,
            metrics_port=port if port >= 0 else None,
            metrics_host=metrics_host,
            default_stale_after=stale_after,
            reap_interval=reap_interval,
            # Several heartbeats fit in the stale period, so one slow write is no death.
            heartbeat_interval=stale_after / HEARTBEATS_PER_STALE_PERIOD,
            shutdown_grace=grace,
            shutdown_timeout=timeout,
            enable_pruning=prunes,
            prune_interval=prune_interval,
            keep_done=kept_done,
            keep_failed=kept_failed,
            delete_done=env_bool("WORKER_DELETE_DONE", delete_done, False),
            enable_vacuum=env_bool("WORKER_VACUUM_ENABLED", enable_vacuum, True),
            backoff=backoff if backoff is not None else BackoffPolicy(),
            idle_policy=idle_policy if idle_policy is not None else IdlePollPolicy(),
            loop_error_policy=(
                loop_error_policy if loop_error_policy is not None else LoopErrorPolicy()
            ),
            schedules=tuple(schedules),
        )
        settings._check_schedules()
        return settings

    def _check_schedules(self) -> None:
        names: set[str] = set()
        for schedule in self.schedules:
            if not isinstance(schedule, Schedule):
                raise TypeError(f"schedules=[...] takes Schedule objects, got {schedule!r}")
            if schedule.name in names:
                raise ValueError(
                    f"two schedules are named {schedule.name!r}: give each a name= of its own"
                )
            names.add(schedule.name)
            runs_it = self.handlers.get(schedule.job_type)
            if runs_it is not None and runs_it.payload_model is not None:
                try:
                    validate(runs_it.payload_model, schedule.payload or {}, schedule.job_type)
                except PayloadInvalid as exc:
                    raise ValueError(f"schedule {schedule.name!r}: {exc}") from None
            elif runs_it is None:
                logger.warning(
                    "worker %s enqueues schedule %r, but has no handler for its job type %r: "
                    "its jobs wait for a worker that has one",
                    self.worker_id,
                    schedule.name,
                    schedule.job_type,
                )
