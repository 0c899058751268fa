"""PgJobStore: every SQL statement pqrun runs against the ``jobs`` table.

Each statement that moves a job names the state it expects the job to be in and, for a
job that is RUNNING, the claim that owns it (``locked_by``, ``attempts`` and
``lease_id``, the id of the claiming transaction). A move whose expectation no longer
holds changes nothing; the caller learns it from the return value.
docs/state-machine.md lists the moves and their guards.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import os
import re
import socket
import traceback
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, unquote_plus

import asyncpg

from . import tracing
from .errors import (
    DatabaseUnavailable,
    JobConflict,
    JobNotFound,
    PayloadInvalid,
    SchemaMissing,
    WaitTimeout,
    WorkerIdInUse,
)
from .limits import (
    check_run_at,
    check_run_delay,
    check_text,
    check_timeout_seconds,
    encode_payload,
)
from .models import Job, JobStatus, RawJSON, encode_json, is_pydantic_model
from .observers import JobObserver
from .payloads import is_model_class, validate
from .schema import ddl_sql
from .waiting import FinishWaiters

logger = logging.getLogger("pqrun")

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    from .handlers import Handler
    from .schedules import Schedule

    #: A connection from ``store.connection()`` / ``store.transaction()``, or your own.
    Connection = asyncpg.Connection[Any] | PoolConnectionProxy[Any]
else:
    Connection = asyncpg.Connection

# Errors that say the connection or the server went away, rather than that a statement
# was wrong. They become DatabaseUnavailable for the caller.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.InterfaceError,
)

# What asyncpg raises for a DSN it cannot read: urllib's and ipaddress's ValueError
# (whose text may quote part of the password: a password holding [ ] is read as an IPv6
# address), OverflowError for a port out of range.
DSN_ERRORS: tuple[type[BaseException], ...] = (ValueError, OverflowError)

# Errors of opening a connection that say the server is not there (or not for us: no
# such role or database), or that the DSN does not say where it is.
CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    *DSN_ERRORS,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidCatalogNameError,
)

# A value asyncpg cannot encode for its parameter (an InterfaceError, so it would pass
# for a connection error): the data is refused, nothing is wrong with the connection.
ClientDataError = asyncpg.exceptions._base.DataError

INT32_MAX = 2**31 - 1

# Heartbeats a worker sends within one stale period (default_stale_after).
HEARTBEATS_PER_STALE_PERIOD = 6

# With concurrency_limit_per_key, a claim chooses among this many of the first due jobs
# of the type: keys beyond them wait until those ahead have run.
PER_KEY_WINDOW = 200

# A limited job type that another worker is claiming right now is looked at again after
# this long (seconds).
LIMIT_BUSY_RETRY_SECONDS = 0.02

# store.wait() is woken by a notification; it looks again after this long anyway, in
# case one was lost with a dropped connection.
WAIT_RECHECK_SECONDS = 10.0


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


def _quiet_pool_floor_warnings() -> None:
    pool_logger = logging.getLogger("asyncpg.pool")
    if _POOL_FLOOR_FILTER not in pool_logger.filters:
        pool_logger.addFilter(_POOL_FLOOR_FILTER)


# create_pool arguments that asyncpg.connect does not take.
POOL_ONLY = frozenset({"setup", "init", "reset", "max_queries", "max_inactive_connection_lifetime"})

# One job. With a dedupe_key an active job holds, nothing is inserted and that job's id
# is returned. DO NOTHING rather than DO UPDATE: the existing job is not locked, so a
# caller's open transaction never holds up the worker that runs that job. If the active
# job was committed after this statement's snapshot, neither part returns a row and the
# caller runs the statement again.
ENQUEUE = """
WITH inserted AS (
    INSERT INTO jobs (job_type, payload, priority, run_after, dedupe_key, max_attempts,
                      timeout_seconds, concurrency_key, trace_context)
    VALUES ($1, $2::text::jsonb, $3, COALESCE($4::timestamptz, now() + $5::interval), $6,
            $7, $8, $9, $10)
    ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL AND status IN ('READY', 'RUNNING')
    DO NOTHING
    RETURNING id
)
SELECT id FROM inserted
UNION ALL
SELECT id FROM jobs
WHERE $6::text IS NOT NULL AND dedupe_key = $6 AND status IN ('READY', 'RUNNING')
  AND NOT EXISTS (SELECT 1 FROM inserted)
LIMIT 1
"""

# ENQUEUE for a DB-API connection (psycopg 2 or 3, Django's connection): the same
# statement with the drivers' named placeholders, for pqrun.sync.
ENQUEUE_DBAPI = """
WITH inserted AS (
    INSERT INTO jobs (job_type, payload, priority, run_after, dedupe_key, max_attempts,
                      timeout_seconds, concurrency_key)
    VALUES (%(job_type)s, %(payload)s::text::jsonb, %(priority)s,
            COALESCE(%(run_at)s::timestamptz, now() + %(delay)s::interval),
            %(dedupe_key)s, %(max_attempts)s, %(timeout_seconds)s, %(concurrency_key)s)
    ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL AND status IN ('READY', 'RUNNING')
    DO NOTHING
    RETURNING id
)
SELECT id FROM inserted
UNION ALL
SELECT id FROM jobs
WHERE %(dedupe_key)s::text IS NOT NULL AND dedupe_key = %(dedupe_key)s
  AND status IN ('READY', 'RUNNING')
  AND NOT EXISTS (SELECT 1 FROM inserted)
LIMIT 1
"""

# SWITCH_SEARCH_PATH and RESTORE_SEARCH_PATH for a DB-API connection.
SWITCH_SEARCH_PATH_DBAPI = """
SELECT current_setting('search_path') AS was, set_config('search_path', %(path)s, false) AS now
"""
RESTORE_SEARCH_PATH_DBAPI = "SELECT set_config('search_path', %(path)s, false)"

# Many jobs in one statement. Ids are drawn up front so that each input row knows its
# own, whatever order RETURNING comes back in. A row whose dedupe_key an active job holds
# gets that job's id (NULL if that job is not in this statement's snapshot: the caller
# asks again for those). Duplicate keys within one batch are merged before this. $9 is
# the trace context of the enqueue span, the same for every row.
ENQUEUE_MANY = """
WITH input AS (
    SELECT nextval(pg_get_serial_sequence('jobs', 'id')) AS id, t.*
    FROM unnest($1::text[], $2::text[], $3::integer[], $4::timestamptz[], $5::interval[],
                $6::text[], $7::integer[], $8::integer[], $9::text[])
         WITH ORDINALITY AS t(job_type, payload, priority, run_at, delay, dedupe_key,
                              max_attempts, timeout_seconds, concurrency_key, position)
),
inserted AS (
    INSERT INTO jobs (id, job_type, payload, priority, run_after, dedupe_key, max_attempts,
                      timeout_seconds, concurrency_key, trace_context)
    SELECT id, job_type, payload::jsonb, priority, COALESCE(run_at, now() + delay),
           dedupe_key, max_attempts, timeout_seconds, concurrency_key, $10::text
    FROM input
    ORDER BY position
    ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL AND status IN ('READY', 'RUNNING')
    DO NOTHING
    RETURNING id
)
SELECT CASE
           WHEN input.id IN (SELECT id FROM inserted) THEN input.id
           ELSE (SELECT active.id FROM jobs AS active
                 WHERE active.dedupe_key = input.dedupe_key
                   AND active.status IN ('READY', 'RUNNING'))
       END AS id
FROM input
ORDER BY input.position
"""

# READY -> RUNNING. SKIP LOCKED lets concurrent pickups take disjoint rows without
# waiting; the row lock it takes is what makes the status test in the UPDATE safe.
# lease_id, the id of this transaction, names this claim: no other claim of any job has
# it, so a move that names it can only be made by this run.
PICKUP = """
WITH due AS (
    SELECT id
    FROM jobs
    WHERE status = 'READY'
      AND run_after <= now()
      AND ($2::text[] IS NULL OR job_type = ANY($2::text[]))
    ORDER BY priority DESC, run_after, id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE jobs AS j
SET status = 'RUNNING',
    attempts = j.attempts + 1,
    lease_id = txid_current(),
    heartbeat_at = now(),
    locked_at = now(),
    locked_by = $1,
    updated_at = now()
FROM due
WHERE j.id = due.id AND j.status = 'READY'
RETURNING j.id, j.job_type, j.payload::text AS payload, j.status, j.priority, j.attempts,
          j.max_attempts,
          -- Times a row may hold from SQL (even -infinity, or year 10000 on an old schema)
          -- come back within what a Python datetime can hold: one odd row must not make
          -- the whole batch unreadable after its claim committed.
          least(greatest(j.run_after, '0001-01-02 00:00+00'), '9999-12-30 00:00+00')
              AS run_after,
          j.timeout_seconds, j.locked_at, j.locked_by, j.lease_id, j.heartbeat_at,
          j.dedupe_key, j.last_error, NULL::timestamptz AS finished_at, j.duration_ms,
          NULL::text AS result,
          least(greatest(j.created_at, '0001-01-02 00:00+00'), '9999-12-30 00:00+00')
              AS created_at,
          j.updated_at, j.concurrency_key, j.trace_context
"""

# Claims of a job type whose handler has limits (docs/flow-control.md) go one worker at a
# time: each takes this transaction-scoped advisory lock, named after the queue's channel
# and the job type, in a statement of its own before PICKUP_LIMITED. Under READ
# COMMITTED each statement sees what was committed when it began, so the claim that
# follows the lock counts every claim committed before, including the previous holder's.
# (Taking the lock inside the claim's own statement would count from a snapshot taken
# before the wait: two workers could both see room for the last slot.) A worker that
# finds the lock taken does not wait: another worker is claiming that type right now,
# and this one looks again a moment later.
LIMIT_LOCK = "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))"

# READY -> RUNNING for one limited job type, under LIMIT_LOCK. How many to claim:
#   $3  at most this many (the worker's free slots),
#   $4  concurrency_limit: minus the jobs of the type RUNNING now,
#   $5  concurrency_limit_per_key: per concurrency_key (NULL keys count as one key),
#       choosing among the first $8 due jobs,
#   $6  rate_limit per $7: minus the claims recorded in job_rate_limits in the last $7.
# Each claim is recorded there, by start time. The last column is in how many seconds the
# rate limit has room again, set only when it was used up and due jobs remain (the
# worker looks again then). A duration, not a time: the worker's clock may differ.
# Times are statement_timestamp(): the transaction began before the lock wait.
PICKUP_LIMITED = """
WITH running AS (
    SELECT count(*) AS total
    FROM jobs
    WHERE $4::integer IS NOT NULL AND status = 'RUNNING' AND job_type = $2
),
recent AS (
    SELECT count(*) AS started, min(s.at) AS oldest
    FROM job_rate_limits AS r, unnest(r.starts) AS s(at)
    WHERE $6::integer IS NOT NULL AND r.job_type = $2
      AND s.at > statement_timestamp() - $7::interval
),
room AS (
    SELECT greatest(0, least($3::integer,
                             COALESCE($4::integer - running.total, $3::integer),
                             COALESCE($6::integer - recent.started, $3::integer))) AS n
    FROM running, recent
),
candidates AS (
    SELECT id, concurrency_key, priority, run_after
    FROM jobs
    WHERE status = 'READY' AND run_after <= now() AND job_type = $2
    ORDER BY priority DESC, run_after, id
    LIMIT (SELECT CASE WHEN n = 0 THEN 0 WHEN $5::integer IS NULL THEN n
                       ELSE greatest(n, $8::integer) END
           FROM room)
    FOR UPDATE SKIP LOCKED
),
running_per_key AS (
    SELECT concurrency_key, count(*) AS total
    FROM jobs
    WHERE $5::integer IS NOT NULL AND status = 'RUNNING' AND job_type = $2
    GROUP BY concurrency_key
),
ranked AS (
    SELECT c.id, c.priority, c.run_after,
           COALESCE(k.total, 0) + row_number() OVER (
               PARTITION BY c.concurrency_key ORDER BY c.priority DESC, c.run_after, c.id
           ) AS running_with_it
    FROM candidates AS c
    LEFT JOIN running_per_key AS k ON k.concurrency_key IS NOT DISTINCT FROM c.concurrency_key
),
chosen AS (
    SELECT id
    FROM ranked
    WHERE $5::integer IS NULL OR running_with_it <= $5::integer
    ORDER BY priority DESC, run_after, id
    LIMIT (SELECT n FROM room)
),
claimed AS (
    UPDATE jobs AS j
    SET status = 'RUNNING',
        attempts = j.attempts + 1,
        lease_id = txid_current(),
        heartbeat_at = statement_timestamp(),
        locked_at = statement_timestamp(),
        locked_by = $1,
        updated_at = statement_timestamp()
    FROM chosen
    WHERE j.id = chosen.id AND j.status = 'READY'
    RETURNING j.id, j.job_type, j.payload::text AS payload, j.status, j.priority, j.attempts,
              j.max_attempts,
              -- Readable times whatever the row holds, as in PICKUP.
              least(greatest(j.run_after, '0001-01-02 00:00+00'), '9999-12-30 00:00+00')
                  AS run_after,
              j.timeout_seconds, j.locked_at, j.locked_by, j.lease_id, j.heartbeat_at,
              j.dedupe_key, j.last_error, NULL::timestamptz AS finished_at, j.duration_ms,
              NULL::text AS result,
              least(greatest(j.created_at, '0001-01-02 00:00+00'), '9999-12-30 00:00+00')
                  AS created_at,
              j.updated_at, j.concurrency_key, j.trace_context
),
recorded AS (
    INSERT INTO job_rate_limits AS r (job_type, starts)
    SELECT $2, array_fill(statement_timestamp(), ARRAY[(SELECT count(*) FROM claimed)::integer])
    WHERE $6::integer IS NOT NULL AND EXISTS (SELECT 1 FROM claimed)
    ON CONFLICT (job_type) DO UPDATE
    SET starts = ARRAY(SELECT s.at FROM unnest(r.starts) AS s(at)
                       WHERE s.at > statement_timestamp() - $7::interval) || EXCLUDED.starts
),
rate AS (
    SELECT CASE WHEN recent.started + (SELECT count(*) FROM claimed) >= $6::integer
                 AND EXISTS (SELECT 1 FROM jobs
                             WHERE status = 'READY' AND run_after <= now() AND job_type = $2
                               AND id NOT IN (SELECT id FROM claimed))
                THEN extract(epoch FROM COALESCE(recent.oldest, statement_timestamp())
                                        + $7::interval - statement_timestamp())::float8
           END AS room_in_seconds
    FROM recent
)
SELECT claimed.*, rate.room_in_seconds
FROM rate LEFT JOIN claimed ON true
"""

# Wake idle workers: a limited job type may have room again.
WAKE_WORKERS = "SELECT pg_notify($1, '')"

# Flag a job whose finish someone waits for (store.wait()): from then on, the trigger
# jobs_notify_finished announces its move to DONE, FAILED or CANCELLED on the channel.
MARK_AWAITED = """
UPDATE jobs SET awaited = true
WHERE id = $1 AND status IN ('READY', 'RUNNING') AND NOT awaited
"""

# RUNNING (this claim) -> DONE. $4 NULL: the caller knows the owner and attempt only.
MARK_DONE = """
UPDATE jobs
SET status = 'DONE',
    result = $5::text::jsonb,
    duration_ms = $6,
    finished_at = now(),
    updated_at = now()
WHERE id = $1 AND status = 'RUNNING' AND locked_by = $2 AND attempts = $3
  AND ($4::bigint IS NULL OR lease_id = $4)
"""

# RUNNING -> DONE for many jobs in one statement, each row guarded by its own claim.
# Returns the ids that moved; the others were no longer owned by that claim.
MARK_DONE_BATCH = """
UPDATE jobs AS j
SET status = 'DONE',
    result = d.result::jsonb,
    duration_ms = d.duration_ms,
    finished_at = now(),
    updated_at = now()
FROM unnest($1::bigint[], $2::text[], $3::integer[], $4::bigint[], $5::text[],
            $6::integer[])
     AS d(id, locked_by, attempts, lease_id, result, duration_ms)
WHERE j.id = ANY($1::bigint[])  -- lets the planner reach the rows through the primary key
  AND j.id = d.id
  AND j.status = 'RUNNING' AND j.locked_by = d.locked_by AND j.attempts = d.attempts
  AND j.lease_id = d.lease_id
RETURNING j.id, j.lease_id
"""

# RUNNING (this claim) -> READY after a delay, or FAILED when the handler said so ($6)
# or this was the last allowed attempt. A job back in READY has no owner.
MARK_ERROR = """
UPDATE jobs
SET status = CASE WHEN $6 OR attempts >= max_attempts THEN 'FAILED' ELSE 'READY' END,
    run_after = CASE WHEN $6 OR attempts >= max_attempts THEN run_after
                     ELSE now() + $7::interval END,
    finished_at = CASE WHEN $6 OR attempts >= max_attempts THEN now() END,
    locked_at = CASE WHEN $6 OR attempts >= max_attempts THEN locked_at END,
    locked_by = CASE WHEN $6 OR attempts >= max_attempts THEN locked_by END,
    last_error = $5,
    duration_ms = $8,
    updated_at = now()
WHERE id = $1 AND status = 'RUNNING' AND locked_by = $2 AND attempts = $3
  AND ($4::bigint IS NULL OR lease_id = $4)
RETURNING status
"""

# RUNNING (this claim) -> READY after a delay, giving the attempt back: the handler said
# "not now" (Snooze), which is no failure.
SNOOZE = """
UPDATE jobs
SET status = 'READY',
    attempts = attempts - 1,
    run_after = now() + $5::interval,
    locked_at = NULL,
    locked_by = NULL,
    duration_ms = $6,
    updated_at = now()
WHERE id = $1 AND status = 'RUNNING' AND locked_by = $2 AND attempts = $3
  AND ($4::bigint IS NULL OR lease_id = $4)
"""

# RUNNING (these claims) -> READY, at once, for a worker that is shutting down. The
# interrupted run is not counted against max_attempts. Other workers are woken.
RELEASE = """
WITH released AS (
    UPDATE jobs AS j
    SET status = 'READY',
        attempts = j.attempts - 1,
        run_after = now(),
        locked_at = NULL,
        locked_by = NULL,
        last_error = $5,
        updated_at = now()
    FROM unnest($1::bigint[], $2::text[], $3::integer[], $4::bigint[])
         AS mine(id, locked_by, attempts, lease_id)
    WHERE j.id = ANY($1::bigint[])
      AND j.id = mine.id
      AND j.status = 'RUNNING' AND j.locked_by = mine.locked_by
      AND j.attempts = mine.attempts AND j.lease_id = mine.lease_id
    RETURNING j.id
),
woken AS (SELECT pg_notify($6, '') WHERE EXISTS (SELECT 1 FROM released))
SELECT released.id FROM released LEFT JOIN woken ON true
"""

# One reaper at a time per queue: the transaction-scoped advisory lock named after the
# queue's channel. Returns false at once when another reaper holds it.
REAPER_LOCK = "SELECT pg_try_advisory_xact_lock(hashtext($1))"

# One pruner at a time per queue, like the reaper, under a lock of its own.
PRUNE_LOCK = "SELECT pg_try_advisory_xact_lock(hashtext($1 || ':prune'))"

# (DONE, FAILED or CANCELLED) $1, finished more than $2 ago -> deleted, at most $3 rows:
# a short transaction that locks few rows, through the jobs_finished index. SKIP LOCKED:
# a row someone is retrying right now is left for the next pass; the DELETE repeats the
# status, so a job that left $1 meanwhile is not deleted.
PRUNE_FINISHED = """
WITH doomed AS (
    SELECT id
    FROM jobs
    WHERE status = $1 AND finished_at IS NOT NULL AND finished_at < now() - $2::interval
    ORDER BY status, finished_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
DELETE FROM jobs AS j
USING doomed
WHERE j.id = doomed.id AND j.status = $1
"""

# RUNNING with no sign of life for $1 -> READY, or FAILED when that was its last allowed
# attempt. A run's sign of life is its worker's heartbeat in job_workers (younger than $1)
# listing the run's claim (job id and lease_id); a claim younger than $1 is left alone
# too, since its worker lists it only from its next heartbeat on. So a job is taken back
# only when its worker is gone (or silent for $1), or alive but no longer holding it (a
# claim whose answer was lost with the connection); a RUNNING row with no owner, written
# by hand, goes back as well. The reaper reads job_workers and never waits for a worker:
# heartbeats do not touch job rows. The CTE locks each stale row together with the claim
# it saw, and the UPDATE repeats that claim, so a job completed or re-picked meanwhile is
# left alone. SKIP LOCKED: a row that someone holds locked right now is not waited for;
# if still stale, the next pass takes it.
REAP_STALE = """
WITH alive AS (
    SELECT w.worker_id, w.heartbeat_at, held.id, held.lease_id
    FROM job_workers AS w,
         unnest(w.held_jobs, w.held_leases) AS held(id, lease_id)
    -- Fresh by the longer of the reaper's stale period and the worker's own.
    WHERE w.heartbeat_at >= now() - greatest($1::interval, COALESCE(w.stale_after, $1::interval))
),
-- After an outage every heartbeat is stale at once. So ($2 given) nothing is taken back
-- unless workers reached the database all through the last stretch of time `wait`: $2
-- (three of the reaper's heartbeat intervals), or half the longest stale period of any
-- worker (three of its intervals), whichever is longer. Each worker's run of heartbeats
-- (from alive_since to its last heartbeat, plus two of its intervals, the gap that would
-- have broken the run) is a span, and the spans of all workers, dead ones included, must
-- cover [now() - wait, now()] without a hole. Workers that restart often still cover it
-- together; after an outage nobody covers it until `wait` after the first is back, by
-- when every live worker has sent a heartbeat again. Only rows this release writes
-- count (stale_after set): an older worker's row keeps no alive_since.
wait AS (
    SELECT greatest($2::interval, max(w.stale_after) / 2) AS span
    FROM job_workers AS w
    WHERE w.stale_after IS NOT NULL
),
spans AS (
    SELECT greatest(w.alive_since, now() - (SELECT span FROM wait)) AS from_at,
           w.heartbeat_at + COALESCE(w.stale_after / 3, $3::interval) AS to_at
    FROM job_workers AS w
    WHERE $2::interval IS NOT NULL AND w.stale_after IS NOT NULL
      AND w.heartbeat_at + COALESCE(w.stale_after / 3, $3::interval)
          >= now() - (SELECT span FROM wait)
),
reach AS (
    SELECT from_at, to_at,
           max(to_at) OVER (ORDER BY from_at ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
               AS covered_to
    FROM spans
),
reachable AS (
    SELECT $2::interval IS NULL
           OR COALESCE(min(from_at) <= now() - (SELECT span FROM wait) AND max(to_at) >= now()
                       AND bool_and(covered_to IS NULL OR from_at <= covered_to), false)
           AS ok
    FROM reach
),
stale AS (
    SELECT j.id, j.locked_by, j.attempts, j.lease_id, owner.heartbeat_at AS last_heartbeat
    FROM jobs AS j
    -- The stale period is the longer of the reaper's and the owner's own.
    LEFT JOIN job_workers AS owner ON owner.worker_id = j.locked_by
    WHERE j.status = 'RUNNING'
      AND COALESCE(j.locked_at, j.updated_at)
          < now() - greatest($1::interval, COALESCE(owner.stale_after, $1::interval))
      -- A worker of a version before job_workers listed claims heartbeats the job row.
      AND COALESCE(j.heartbeat_at, j.locked_at, j.updated_at)
          < now() - greatest($1::interval, COALESCE(owner.stale_after, $1::interval))
      AND ($4::bigint IS NULL OR j.id = $4)  -- one job (reaping one by one)
      AND (SELECT ok FROM reachable)
      AND NOT EXISTS (
          SELECT 1 FROM alive
          WHERE alive.worker_id = j.locked_by AND alive.id = j.id
            AND alive.lease_id = j.lease_id
      )
    ORDER BY j.id
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE jobs AS j
SET status = CASE WHEN j.attempts >= j.max_attempts THEN 'FAILED' ELSE 'READY' END,
    run_after = CASE WHEN j.attempts >= j.max_attempts THEN j.run_after ELSE now() END,
    finished_at = CASE WHEN j.attempts >= j.max_attempts THEN now() END,
    locked_at = CASE WHEN j.attempts >= j.max_attempts THEN j.locked_at END,
    locked_by = CASE WHEN j.attempts >= j.max_attempts THEN j.locked_by END,
    last_error = CASE
        WHEN j.attempts >= j.max_attempts THEN format(
            'abandoned: attempt %s of %s (worker %s, claimed %s) gave no sign of life '
            '(last worker heartbeat: %s), and no attempts are left',
            j.attempts, j.max_attempts, COALESCE(j.locked_by, 'none'), j.locked_at,
            COALESCE(stale.last_heartbeat::text, 'none'))
        ELSE format(
            'reaped: attempt %s of %s (worker %s, claimed %s) gave no sign of life '
            '(last worker heartbeat: %s); put back to READY',
            j.attempts, j.max_attempts, COALESCE(j.locked_by, 'none'), j.locked_at,
            COALESCE(stale.last_heartbeat::text, 'none'))
    END,
    updated_at = now()
FROM stale
WHERE j.id = stale.id
  AND j.status = 'RUNNING' AND j.locked_by IS NOT DISTINCT FROM stale.locked_by
  AND j.attempts = stale.attempts AND j.lease_id IS NOT DISTINCT FROM stale.lease_id
RETURNING j.id, j.status, stale.locked_by, j.attempts, j.job_type
"""

# The RUNNING jobs REAP_STALE may take back ($1: the stale period), for reaping one by one
# when one row refuses the move; REAP_STALE checks each again.
# (The jobs of live workers, which their heartbeats list, are left out as in REAP_STALE;
# at most 1,000 a pass, the next pass takes the rest.)
REAP_CANDIDATES = """
WITH alive AS (
    SELECT w.worker_id, held.id, held.lease_id
    FROM job_workers AS w,
         unnest(w.held_jobs, w.held_leases) AS held(id, lease_id)
    WHERE w.heartbeat_at >= now() - greatest($1::interval, COALESCE(w.stale_after, $1::interval))
)
SELECT j.id
FROM jobs AS j
LEFT JOIN job_workers AS owner ON owner.worker_id = j.locked_by
WHERE j.status = 'RUNNING'
  AND COALESCE(j.locked_at, j.updated_at)
      < now() - greatest($1::interval, COALESCE(owner.stale_after, $1::interval))
  AND NOT EXISTS (
      SELECT 1 FROM alive
      WHERE alive.worker_id = j.locked_by AND alive.id = j.id AND alive.lease_id = j.lease_id
  )
ORDER BY j.id
LIMIT 1000
"""
# Errors of a reap that one row's data or a rule about it can cause (data exceptions,
# integrity and check constraints, triggers raising): reaped one by one, the other rows
# go on. Any other error (permissions, a missing column, the server) is everyone's.
REAP_ROW_REFUSALS = ("22", "23", "27", "44", "P0")

# A worker's heartbeat, run on the worker's own connection: its row in the registry,
# with the claims it holds ($6 job ids, $7 their lease_ids), and which of those claims
# still own their job. It writes no job row and reads job rows without locking them, so
# nothing another session or a handler holds can make it wait (a plain SELECT never
# waits for row locks). A claim missing from the answer was cancelled or taken back.
# The row is this worker's only if it carries its instance token $8, or its last
# heartbeat is older than $9 (that worker is gone): a second live worker with the same
# worker_id would erase the first one's claims, so it is told (registered = false).
# alive_since is kept while heartbeats come less than $10 apart, else starts again.
HEARTBEAT = """
WITH registered AS (
    INSERT INTO job_workers AS w (worker_id, host, pid, job_types, concurrency, held_jobs,
                                  held_leases, instance, stale_after)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
    ON CONFLICT (worker_id) DO UPDATE
    SET heartbeat_at = now(), host = EXCLUDED.host, pid = EXCLUDED.pid,
        job_types = EXCLUDED.job_types, concurrency = EXCLUDED.concurrency,
        held_jobs = EXCLUDED.held_jobs, held_leases = EXCLUDED.held_leases,
        instance = EXCLUDED.instance, stale_after = EXCLUDED.stale_after,
        started_at = CASE WHEN w.instance IS NOT DISTINCT FROM EXCLUDED.instance
                          THEN w.started_at ELSE now() END,
        alive_since = CASE WHEN w.instance IS NOT DISTINCT FROM EXCLUDED.instance
                            AND w.heartbeat_at >= now() - $10::interval
                           THEN w.alive_since ELSE now() END
    WHERE w.instance IS NOT DISTINCT FROM EXCLUDED.instance
       OR w.heartbeat_at < now() - greatest($9::interval, COALESCE(w.stale_after, $9::interval))
    RETURNING w.worker_id
),
owned AS (
    SELECT j.id, j.lease_id
    FROM jobs AS j
    JOIN unnest($6::bigint[], $7::bigint[]) AS mine(id, lease_id) ON j.id = mine.id
    WHERE j.id = ANY($6::bigint[])
      AND j.status = 'RUNNING' AND j.locked_by = $1 AND j.lease_id = mine.lease_id
)
SELECT EXISTS (SELECT 1 FROM registered) AS registered, owned.id, owned.lease_id
FROM (SELECT 1) AS one LEFT JOIN owned ON true
"""

# Which of these claims ($2 job ids, $3 lease_ids) of worker $1 still own their job: a
# read, without locks, for a worker told (by a notification anyone may send) that one
# of its jobs was cancelled. The row decides, not the notification.
STILL_OWNED = """
SELECT j.id, j.lease_id
FROM jobs AS j
JOIN unnest($2::bigint[], $3::bigint[]) AS mine(id, lease_id) ON j.id = mine.id
WHERE j.id = ANY($2::bigint[])
  AND j.status = 'RUNNING' AND j.locked_by = $1 AND j.lease_id = mine.lease_id
"""

# Workers whose heartbeat is older than $1 (and than their own stale period) are gone,
# or cut off: off the registry.
FORGET_DEAD_WORKERS = """
DELETE FROM job_workers
WHERE heartbeat_at < now() - greatest($1::interval, COALESCE(stale_after, $1::interval))
RETURNING worker_id
"""

# Only this instance's row: a worker leaving must not take a namesake off the registry.
LEAVE = """
DELETE FROM job_workers WHERE worker_id = $1 AND instance IS NOT DISTINCT FROM $2
"""

WORKER_ROW = "SELECT host, pid, started_at FROM job_workers WHERE worker_id = $1"

LIST_WORKERS = """
SELECT worker_id, host, pid, job_types, concurrency, started_at, heartbeat_at
FROM job_workers
ORDER BY started_at
"""

# READY or RUNNING -> CANCELLED. The worker running a RUNNING job is told on the
# channel ('cancel:<id>') and cancels its handler; whatever that run answers finds the
# job CANCELLED and changes nothing.
CANCEL = """
WITH target AS (
    SELECT id, status AS was FROM jobs
    WHERE id = $1 AND status IN ('READY', 'RUNNING')
    FOR UPDATE
),
cancelled AS (
    UPDATE jobs AS j
    SET status = 'CANCELLED', finished_at = now(), updated_at = now()
    FROM target
    WHERE j.id = target.id AND j.status IN ('READY', 'RUNNING')
    RETURNING j.id, target.was
),
told AS (SELECT pg_notify($2, 'cancel:' || id) FROM cancelled WHERE was = 'RUNNING')
SELECT cancelled.id FROM cancelled LEFT JOIN told ON true
"""

# FAILED or CANCELLED -> READY with a fresh count of attempts. Only an explicit call
# does this: nothing in pqrun calls it by itself. Idle workers are woken.
RETRY = """
WITH moved AS (
    UPDATE jobs
    SET status = 'READY',
        attempts = 0,
        run_after = now(),
        locked_at = NULL,
        locked_by = NULL,
        finished_at = NULL,
        duration_ms = NULL,
        result = NULL,
        updated_at = now()
    WHERE id = $1 AND status IN ('FAILED', 'CANCELLED')
    RETURNING id
),
woken AS (SELECT pg_notify($2, '') WHERE EXISTS (SELECT 1 FROM moved))
SELECT moved.id FROM moved LEFT JOIN woken ON true
"""

# A worker declares its schedules: the definition is its, and the next tick is kept unless
# the timing (cron, interval or timezone) changed, so a tick missed while no worker ran
# is still due when one starts.
DECLARE_SCHEDULE = """
INSERT INTO job_schedules AS s (name, job_type, cron, every_seconds, timezone, payload,
                                priority, max_attempts, timeout_seconds, missed, next_run_at)
VALUES ($1, $2, $3, $4, $5, $6::text::jsonb, $7, $8, $9, $10, $11)
ON CONFLICT (name) DO UPDATE
SET job_type = EXCLUDED.job_type,
    payload = EXCLUDED.payload,
    priority = EXCLUDED.priority,
    max_attempts = EXCLUDED.max_attempts,
    timeout_seconds = EXCLUDED.timeout_seconds,
    missed = EXCLUDED.missed,
    declared_at = now(),
    next_run_at = CASE
        WHEN (s.cron, s.every_seconds, s.timezone)
             IS NOT DISTINCT FROM (EXCLUDED.cron, EXCLUDED.every_seconds, EXCLUDED.timezone)
        THEN s.next_run_at ELSE EXCLUDED.next_run_at END,
    cron = EXCLUDED.cron,
    every_seconds = EXCLUDED.every_seconds,
    timezone = EXCLUDED.timezone
"""

DATABASE_NOW = "SELECT now()"

# The due schedules among $1, locked for this transaction. SKIP LOCKED: a schedule that
# another worker is firing right now is that worker's to fire.
DUE_SCHEDULES = """
SELECT name, next_run_at, now() AS now
FROM job_schedules
WHERE name = ANY($1::text[]) AND next_run_at <= now()
ORDER BY next_run_at
FOR UPDATE SKIP LOCKED
"""

# Move a fired schedule to its next tick. It names the tick it fired: if that is no
# longer the row's next tick, someone else fired it, and nothing changes.
ADVANCE_SCHEDULE = """
UPDATE job_schedules
SET next_run_at = $3, last_run_at = COALESCE($4, last_run_at),
    last_job_id = COALESCE($5, last_job_id)
WHERE name = $1 AND next_run_at = $2
"""

# Seconds until the earliest of these schedules is due (negative: due already).
NEXT_SCHEDULE_DUE = """
SELECT extract(epoch FROM min(next_run_at) - now())::float8
FROM job_schedules
WHERE name = ANY($1::text[])
"""

LIST_SCHEDULES = """
SELECT name, job_type, cron, every_seconds, timezone, payload::text AS payload, priority,
       max_attempts, timeout_seconds, missed, next_run_at, last_run_at, last_job_id,
       declared_at
FROM job_schedules
ORDER BY name
"""

REMOVE_SCHEDULE = "DELETE FROM job_schedules WHERE name = $1"

GET_JOB = """
SELECT id, job_type, payload::text AS payload, status, priority, attempts, max_attempts,
       run_after, timeout_seconds, locked_at, locked_by, lease_id, heartbeat_at, dedupe_key,
       last_error, finished_at, duration_ms, result::text AS result, created_at, updated_at,
       concurrency_key, trace_context
FROM jobs
WHERE id = $1
"""

LIST_JOBS = """
SELECT id, job_type, payload::text AS payload, status, priority, attempts, max_attempts,
       run_after, timeout_seconds, locked_at, locked_by, lease_id, heartbeat_at, dedupe_key,
       last_error, finished_at, duration_ms, result::text AS result, created_at, updated_at,
       concurrency_key, trace_context
FROM jobs
WHERE ($1::text IS NULL OR status = $1::text)
  AND ($2::text IS NULL OR job_type = $2::text)
ORDER BY id DESC
LIMIT $3
"""

# -- what `pqrun status` and `pqrun top` show. None of these reads the whole table: each
# walks one partial index and stops after $n rows, and the caller says which numbers hit
# that bound (docs/operations.md).

# READY and RUNNING jobs by type, through the pickup and running indexes, at most $1 of
# each status.
STATUS_ACTIVE = """
SELECT job_type, status, count(*) AS n,
       count(*) FILTER (WHERE status = 'READY' AND run_after <= now()) AS due,
       min(run_after) FILTER (WHERE status = 'READY' AND run_after <= now()) AS oldest_due,
       extract(epoch FROM now() - min(run_after) FILTER (
           WHERE status = 'READY' AND run_after <= now()))::float8 AS oldest_due_seconds
FROM (
    (SELECT job_type, status, run_after FROM jobs WHERE status = 'READY' LIMIT $1)
    UNION ALL
    (SELECT job_type, status, run_after FROM jobs WHERE status = 'RUNNING' LIMIT $1)
) AS active
GROUP BY job_type, status
"""

# How many jobs have finished status $1, counting at most $2 (the jobs_finished index).
STATUS_FINISHED = """
SELECT count(*) FROM (
    SELECT 1 FROM jobs WHERE status = $1 AND finished_at IS NOT NULL LIMIT $2
) AS finished
"""

# Rows per status as the planner estimates them: the table's row estimate times the
# share of each status in its statistics (kept by ANALYZE and autovacuum). No rows
# before the table was first analyzed.
STATUS_ESTIMATES = """
SELECT v.status, round(c.reltuples * v.share)::bigint AS estimate
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
JOIN pg_stats AS s
  ON s.schemaname = n.nspname AND s.tablename = c.relname AND s.attname = 'status'
CROSS JOIN LATERAL unnest(s.most_common_vals::text::text[], s.most_common_freqs)
     AS v(status, share)
WHERE c.oid = to_regclass('jobs') AND c.reltuples >= 0
"""

# Jobs that reached status $1 within the last $2: the count of at most $3 of the newest,
# and the finish time of the oldest of those (to extrapolate a rate when capped).
STATUS_RECENT = """
SELECT count(*) AS n, min(finished_at) AS oldest, now() AS now
FROM (
    SELECT finished_at FROM jobs
    WHERE status = $1 AND finished_at IS NOT NULL AND finished_at > now() - $2::interval
    ORDER BY status, finished_at DESC
    LIMIT $3
) AS recent
"""

# The newest failures, through the jobs_finished index.
RECENT_FAILURES = """
SELECT id, job_type, attempts, max_attempts, finished_at,
       split_part(last_error, E'\n', 1) AS error
FROM jobs
WHERE status = 'FAILED' AND finished_at IS NOT NULL
ORDER BY status, finished_at DESC
LIMIT $1
"""

# FAILED jobs (of type $1, or any) with an id above $2, oldest first: `pqrun jobs retry
# --failed` walks them in pages.
FAILED_IDS = """
SELECT id FROM jobs
WHERE status = 'FAILED' AND ($1::text IS NULL OR job_type = $1) AND id > $2
ORDER BY id
LIMIT $3
"""

# What `pqrun check` compares with what ddl.sql creates.
SCHEMA_OBJECTS = """
SELECT n.nspname AS schema,
       ARRAY(SELECT attname::text FROM pg_attribute
             WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped) AS columns,
       ARRAY(SELECT i.relname::text FROM pg_index AS x JOIN pg_class AS i
             ON i.oid = x.indexrelid WHERE x.indrelid = c.oid) AS indexes,
       ARRAY(SELECT tgname::text FROM pg_trigger
             WHERE tgrelid = c.oid AND NOT tgisinternal) AS triggers,
       ARRAY(SELECT t.relname::text FROM pg_class AS t
             WHERE t.relnamespace = n.oid AND t.relkind IN ('r', 'p')) AS tables,
       ARRAY(SELECT a.attname::text FROM pg_attribute AS a
             WHERE a.attrelid = to_regclass(quote_ident(n.nspname) || '.job_workers')
               AND a.attnum > 0 AND NOT a.attisdropped) AS worker_columns
FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass('jobs')
"""

# -- observability: metrics and the dashboard ---------------------------------------
# Each of these is bounded whatever the size of the table: the active jobs through their
# partial indexes, finished jobs through a window of ids or the planner's statistics.

# Workers whose heartbeat is younger than $1.
WORKERS_ALIVE = """
SELECT count(*) FROM job_workers WHERE heartbeat_at >= now() - $1::interval
"""

# The newest id (the primary key's last entry): where a browse starts, and with the
# count of active jobs, how the dashboard measures the rates of enqueue and completion.
MAX_JOB_ID = "SELECT coalesce(max(id), 0) FROM jobs"

# One page of jobs, newest first, among the ids in [$1 - $2, $1): a walk of at most $2
# entries of the primary key however rare the filters are on a big table. The caller
# moves the window to look further back.
BROWSE_JOBS = """
SELECT id, job_type, status, priority, attempts, max_attempts, run_after, locked_by,
       dedupe_key, created_at, updated_at, finished_at, duration_ms,
       left(last_error, 300) AS last_error
FROM jobs
WHERE id < $1 AND id >= $1 - $2
  AND ($3::text IS NULL OR status = $3::text)
  AND ($4::text IS NULL OR job_type = $4::text)
ORDER BY id DESC
LIMIT $5
"""

# The schema holding the jobs table (NULL: not in the search_path). Notifications go to
# the channel 'pqrun:<schema>', so queues in different schemas do not wake each other.
# The channel name is computed as in ddl.sql's trigger function: a channel name is at
# most 63 bytes, so a long schema name is replaced by its md5.
JOBS_SCHEMA = """
SELECT CASE WHEN octet_length('pqrun:' || n.nspname) <= 63 THEN 'pqrun:' || n.nspname
            ELSE 'pqrun:' || md5(n.nspname) END
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass('jobs')
"""


# Switches the search_path of a connection the caller passed in (conn=) to the store's
# schema for one statement, returning what it was so that it can be put back.
SWITCH_SEARCH_PATH = """
SELECT current_setting('search_path') AS was, set_config('search_path', $1, false) AS now
"""

RESTORE_SEARCH_PATH = "SELECT set_config('search_path', $1, false)"

# Creates the store's schema for setup(). An identifier cannot be a bound parameter, so
# PostgreSQL itself quotes the (already validated) name with format('%I').
CREATE_SCHEMA_STATEMENT = "SELECT format('CREATE SCHEMA IF NOT EXISTS %I', $1::text)"

# Drops a schema with everything in it: for pqrun.testing's temporary queues only.
DROP_SCHEMA_STATEMENT = "SELECT format('DROP SCHEMA IF EXISTS %I CASCADE', $1::text)"

# A schema name pqrun accepts: lower case, so that it means the same quoted or not in
# psql and SQL, and at most 63 bytes, PostgreSQL's limit for a name.
SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def check_schema_name(schema: str) -> str:
    """Return ``schema`` if it is a usable schema name, else raise ValueError."""
    if not isinstance(schema, str) or not SCHEMA_NAME.fullmatch(schema):
        raise ValueError(
            f"schema must be a lower-case name of letters, digits and underscores "
            f"starting with a letter or underscore (at most 63), got {schema!r}"
        )
    if schema.startswith("pg_"):
        raise ValueError(f"schema {schema!r}: names starting with pg_ are PostgreSQL's own")
    return schema


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier (for search_path, which takes no parameters)."""
    return '"' + name.replace('"', '""') + '"'


# What ddl.sql creates, for check_schema().
EXPECTED_COLUMNS = (
    "id", "job_type", "payload", "status", "priority", "attempts", "max_attempts",
    "run_after", "timeout_seconds", "locked_at", "locked_by", "lease_id", "heartbeat_at",
    "dedupe_key", "last_error", "finished_at", "duration_ms", "result", "created_at",
    "updated_at", "concurrency_key", "awaited", "trace_context",
)  # fmt: skip
EXPECTED_INDEXES = (
    "jobs_pkey",
    "jobs_ready_pickup",
    "jobs_dedupe_active",
    "jobs_running",
    "jobs_finished",
)
EXPECTED_TRIGGERS = ("jobs_notify_inserted", "jobs_notify_finished")
EXPECTED_TABLES = ("job_workers", "job_rate_limits", "job_schedules")
EXPECTED_WORKER_COLUMNS = ("held_jobs", "held_leases", "instance", "alive_since", "stale_after")

# `pqrun status` counts at most this many rows of a status, and at most this many recent
# completions for a rate; beyond, it estimates.
STATUS_COUNT_CAP = 100_000
STATUS_RATE_CAP = 10_000


def _missing_objects(row: Mapping[str, Any]) -> list[str]:
    """What ddl.sql creates and SCHEMA_OBJECTS did not find."""
    missing = [f"column jobs.{c}" for c in EXPECTED_COLUMNS if c not in row["columns"]]
    missing += [f"table {t}" for t in EXPECTED_TABLES if t not in row["tables"]]
    if "job_workers" in row["tables"]:
        # Without these a worker's heartbeat fails, and its jobs look abandoned.
        missing += [
            f"column job_workers.{c}"
            for c in EXPECTED_WORKER_COLUMNS
            if c not in row["worker_columns"]
        ]
    missing += [f"index {i}" for i in EXPECTED_INDEXES if i not in row["indexes"]]
    missing += [f"trigger {t}" for t in EXPECTED_TRIGGERS if t not in row["triggers"]]
    return missing


def _rate(row: Mapping[str, Any], window: timedelta, cap: int) -> dict[str, Any]:
    """A count of recent jobs, exact below the cap, else extrapolated from the newest."""
    count: int = row["n"]
    seconds = window.total_seconds()
    if count < cap or row["oldest"] is None:
        return {"count": count, "per_second": count / seconds, "exact": True}
    span = max((row["now"] - row["oldest"]).total_seconds(), 1e-3)
    per_second = count / span
    return {"count": round(per_second * seconds), "per_second": per_second, "exact": False}


@dataclass(frozen=True, slots=True)
class Pruned:
    """What one ``store.prune()`` deleted."""

    done: int = 0
    failed: int = 0
    cancelled: int = 0
    #: Another process held the prune lock, so this call stopped early.
    busy: bool = False
    #: The last batch was full: more may be due for deletion (max_batches ran out).
    more: bool = False

    @property
    def total(self) -> int:
        return self.done + self.failed + self.cancelled


REDACTED = "***"

# A URL DSN (postgresql://...); anything else is read as libpq's keyword=value form.
URL_DSN = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*://")
# One keyword=value of libpq's form. A quoted value may hold spaces and \' or \\; an
# unterminated quote runs to the end (so a typo cannot reveal the rest of a password).
KEYWORD_VALUE = re.compile(
    r"(?P<key>[A-Za-z_][A-Za-z0-9_]*)(?P<eq>\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*'?|[^\s']\S*|)",
    re.DOTALL,
)

# ``user:password@`` anywhere in a DSN that is not a URL (a URL whose scheme has a typo).
TYPO_USERINFO = re.compile(r"(?P<user>[^\s:/@]*):(?P<password>[^\s@]+)@")


def _is_secret_key(key: str) -> bool:
    # password and sslpassword, however a URL query spells them (PassWord, pass%77ord):
    # libpq and asyncpg would read some of those spellings as the password, and a key
    # that names a password holds one whoever reads it.
    return "password" in unquote_plus(key).lower()


def _dsn_parts(dsn: str) -> tuple[str, list[str]]:
    """(the DSN with every secret value replaced by ***, the secret values as written
    and decoded). Never raises: a DSN too broken to read is still redacted."""
    found: list[str] = []
    url = URL_DSN.match(dsn)
    if url is None:

        def keyword(match: re.Match[str]) -> str:
            value = match["value"]
            if not _is_secret_key(match["key"]) or value in ("", "''"):
                return match[0]
            found.append(value)
            if value.startswith("'"):
                inner = value[1:-1] if len(value) > 1 and value.endswith("'") else value[1:]
                found.extend((inner, re.sub(r"\\(.)", r"\1", inner)))
            return f"{match['key']}{match['eq']}{REDACTED}"

        redacted = KEYWORD_VALUE.sub(keyword, dsn)

        def typo_userinfo(match: re.Match[str]) -> str:
            # Not a URL, yet ``user:password@`` in it: a URL with a typo in its scheme
            # (``postgresql:/``, ``postgresql//``) still holds a password there.
            found.extend((match["password"], unquote(match["password"])))
            return f"{match['user']}:{REDACTED}@"

        return TYPO_USERINFO.sub(typo_userinfo, redacted), found
    head, body = dsn[: url.end()], dsn[url.end() :]
    # The user info ends at the last @ of the authority. A password written with an
    # unencoded / # or ? still counts as password: the @ is looked for before the query
    # first, then anywhere (at worst more than the password is hidden).
    at = body.split("?", 1)[0].rfind("@")
    if at < 0:
        at = body.rfind("@")
    userinfo, rest = (body[:at], body[at + 1 :]) if at >= 0 else (None, body)
    if userinfo is not None:
        user, colon, password = userinfo.partition(":")
        if colon and password:
            found += [password, unquote(password)]
            userinfo = f"{user}:{REDACTED}"
        head += f"{userinfo}@"
    before, question, query = rest.partition("?")
    if question:
        params = query.split("&")
        for number, param in enumerate(params):
            key, equals, value = param.partition("=")
            if equals and value and _is_secret_key(key):
                found += [value, unquote(value), unquote_plus(value)]
                params[number] = f"{key}={REDACTED}"
        rest = f"{before}?{'&'.join(params)}"
    return head + rest, found


def redact_dsn(dsn: str) -> str:
    """The DSN with every password in it replaced by ``***``, for messages and logs.

    Covers the URL form (``postgresql://user:pw@host/db``, also with an empty user), a
    password given as a query parameter (``?password=``, ``?sslpassword=``, in any case
    or percent-encoding) and libpq's ``key=value`` form (``password=pw``,
    ``password='a b'``). See docs/security.md.
    """
    return _dsn_parts(dsn)[0]


def _secrets(dsn: str | None, extra: Iterable[object]) -> list[str]:
    """The passwords of ``dsn`` (as written and decoded) and the strings among ``extra``,
    longest first: a decoded password may be part of its encoded spelling."""
    found = [secret for secret in extra if isinstance(secret, str)]
    if dsn:
        found += _dsn_parts(dsn)[1]
    return sorted({secret for secret in found if secret}, key=len, reverse=True)


# A text that still holds this many characters of a password in a row (or all of a
# shorter one) after redaction is not shown.
SECRET_PIECE = 5


def redact_secrets(text: str, dsn: str | None, *secrets: object) -> str:
    """``text`` with the DSN shown redacted and each of its passwords (and ``secrets``,
    such as a ``password=`` keyword argument) replaced by ``***``.

    For texts pqrun does not write itself: an asyncpg or OS error may echo the DSN or
    the password, in any of the spellings the DSN used.
    """
    if dsn:
        text = text.replace(dsn, redact_dsn(dsn))  # first, so host and database stay readable
    for secret in _secrets(dsn, secrets):
        text = text.replace(secret, REDACTED)
    return text


def _holds_piece(text: str, secrets: list[str]) -> bool:
    for secret in secrets:
        size = min(SECRET_PIECE, len(secret))
        if any(secret[i : i + size] in text for i in range(len(secret) - size + 1)):
            return True
    return False


def error_text(exc: BaseException, dsn: str | None, *secrets: object) -> str:
    """``Type: text`` of an error, fit for a message: through ``redact_secrets``, and
    without its text at all when that still holds a piece of a password.

    A driver that cannot read a DSN quotes pieces of it (asyncpg reads a password with
    an unencoded ``[`` as an IPv6 address, and says which): no replacement of the whole
    password catches those.
    """
    text = redact_secrets(str(exc), dsn, *secrets)
    if _holds_piece(text, _secrets(dsn, secrets)):
        text = (
            "(its text is not shown: it quotes part of the password. Percent-encode "
            "the characters @ : / ? # [ ] % in a password in a URL DSN)"
        )
    return f"{type(exc).__name__}: {text}"


def cause_without_secrets(
    exc: BaseException, dsn: str | None, *secrets: object
) -> BaseException | None:
    """What an error made from ``exc`` should be raised ``from``: ``exc``, unless its
    traceback (its own causes included) would print a password of ``dsn`` or a piece of
    one; then None, and the new error's message carries ``error_text(exc, ...)``."""
    shown = "".join(traceback.format_exception(exc))
    return None if _holds_piece(shown, _secrets(dsn, secrets)) else exc


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if not minimum <= value <= INT32_MAX:
        raise ValueError(f"{name} must be between {minimum} and {INT32_MAX}, got {value}")
    return value


def _new_job_row(
    job_type: str,
    payload: Any = None,
    priority: int = 0,
    run_after: datetime | timedelta | None = None,
    dedupe_key: str | None = None,
    max_attempts: int = 5,
    timeout_seconds: int | timedelta | None = None,
    concurrency_key: str | None = None,
) -> tuple[str, str, int, datetime | None, timedelta, str | None, int, int | None, str | None]:
    """Check enqueue's arguments and turn them into the columns ENQUEUE binds."""
    if not isinstance(job_type, str) or not job_type:
        raise ValueError(f"job_type must be a non-empty string, got {job_type!r}")
    check_text("job_type", job_type)
    payload_json = encode_payload(payload, f"payload of {job_type!r}")
    if concurrency_key is not None and not isinstance(concurrency_key, str):
        raise TypeError(
            f"concurrency_key must be a string or None, got {type(concurrency_key).__name__} "
            f"{concurrency_key!r}"
        )
    if concurrency_key is not None:
        check_text("concurrency_key", concurrency_key)
    _check_int("priority", priority, -INT32_MAX)
    _check_int("max_attempts", max_attempts, 1)
    timeout_seconds = check_timeout_seconds(timeout_seconds)
    if dedupe_key is not None and (not isinstance(dedupe_key, str) or not dedupe_key):
        raise ValueError(f"dedupe_key must be a non-empty string or None, got {dedupe_key!r}")
    if dedupe_key is not None:
        check_text("dedupe_key", dedupe_key)
    run_at: datetime | None = None
    delay = timedelta(0)
    if isinstance(run_after, datetime):
        run_at = check_run_at(run_after)
    elif isinstance(run_after, timedelta):
        delay = check_run_delay(run_after)
    elif run_after is not None:
        raise TypeError(f"run_after must be a datetime, a timedelta or None, got {run_after!r}")
    return (
        job_type,
        payload_json,
        priority,
        run_at,
        delay,
        dedupe_key,
        max_attempts,
        timeout_seconds,
        concurrency_key,
    )


def _storable(text: str) -> str:
    """``text`` as a PostgreSQL text column takes it: no NUL, no lone surrogates."""
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def _heartbeat_gap(stale_after: timedelta) -> timedelta:
    """Two heartbeat intervals: heartbeats further apart than this break a streak."""
    return stale_after * 2 / HEARTBEATS_PER_STALE_PERIOD


def _claims(jobs: Sequence[Job]) -> tuple[list[int], list[int | None]]:
    """The job ids and lease_ids of ``jobs``, in id order (the order rows are locked in)."""
    ordered = sorted(jobs, key=lambda job: job.id)
    return [job.id for job in ordered], [job.lease_id for job in ordered]


def _owner(
    job: Job | int, worker_id: str | None, attempt: int | None
) -> tuple[int, str, int, int | None]:
    """The (id, locked_by, attempts, lease_id) a move out of RUNNING must find on the row."""
    if isinstance(job, Job):
        if job.locked_by is None:
            raise ValueError(f"job {job.id} has no owner: pass the Job that pickup() returned")
        return (
            job.id,
            worker_id or job.locked_by,
            job.attempts if attempt is None else attempt,
            job.lease_id,
        )
    if worker_id is None or attempt is None:
        raise TypeError(
            f"job {job}: pass the Job that pickup() returned, or the job id together with "
            "worker_id= and attempt=, so that only the attempt that owns the job can move it"
        )
    return job, worker_id, attempt, None


def _status_filter(status: JobStatus | str | None) -> str | None:
    if status is None:
        return None
    try:
        return JobStatus(status).value
    except ValueError:
        valid = ", ".join(s.value for s in JobStatus)
        raise ValueError(f"unknown job status {status!r}; use one of {valid}") from None


class PgJobStore:
    """The jobs table, reached through an asyncpg connection pool.

    ``PgJobStore(dsn)`` does not connect yet: the pool opens on ``start()`` or on first
    use, and ``close()`` (or leaving ``async with store:``) closes it. Without a ``dsn``
    the store reads ``PQRUN_DSN``, then ``DATABASE_URL``.

    ``min_size``/``max_size`` size the pool; ``max_size`` defaults to at least 10 and to
    enough for the concurrency of the workers built on this store. ``statement_timeout``
    bounds each of pqrun's own statements and the wait for a pooled connection, so a
    connection that silently died cannot hang a worker. Further keyword arguments go to
    ``asyncpg.create_pool`` (``server_settings``, ``ssl``, ``statement_cache_size=0``
    behind a transaction-mode pooler, ...).

    ``schema="billing"`` keeps the whole queue (tables, trigger, notification channel)
    in that PostgreSQL schema: the store's connections get ``search_path`` set to it
    alone, so two stores with different schemas share a database without seeing each
    other's jobs. Inside ``store.transaction()`` qualify your own tables
    (``public.orders``). Without it, the queue is wherever the connection's
    ``search_path`` finds the ``jobs`` table (``public`` by default).
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        min_size: int = 1,
        max_size: int | None = None,
        connect_timeout: float = 10.0,
        statement_timeout: float = 30.0,
        schema: str | None = None,
        **pool_kwargs: Any,
    ) -> None:
        dsn = dsn or os.environ.get("PQRUN_DSN") or os.environ.get("DATABASE_URL")
        if not dsn:
            raise ValueError(
                "PgJobStore needs a PostgreSQL DSN: pass dsn='postgresql://user@host/db' "
                "or set PQRUN_DSN or DATABASE_URL"
            )
        self.dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._connections_wanted = 0
        self._connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        # pqrun's batch statements take arrays whose length changes from call to call; a
        # generic plan (what PostgreSQL switches to after five runs of a prepared
        # statement) picks scans sized for no array in particular and made batch
        # completion ten times slower in docs/benchmarks.md. Plan each run for its
        # arrays. A server_settings of yours overrides this.
        settings = {
            "plan_cache_mode": "force_custom_plan",
            **(pool_kwargs.get("server_settings") or {}),
        }
        #: The schema this store keeps its queue in (None: the search_path decides).
        schema = schema if schema is not None else os.environ.get("PQRUN_SCHEMA") or None
        self.schema = None if schema is None else check_schema_name(schema)
        self._search_path: str | None = None
        if self.schema is not None:
            if "search_path" in settings:
                raise ValueError(
                    "pass either schema= or server_settings={'search_path': ...}, not both"
                )
            self._search_path = quote_ident(self.schema)
            settings["search_path"] = self._search_path
        pool_kwargs["server_settings"] = settings
        self._pool_kwargs = pool_kwargs
        self._pool: asyncpg.Pool[Any] | None = None
        self._pool_loop: asyncio.AbstractEventLoop | None = None
        self._schema_checked = False  # and self.channel learned
        self._payload_models: dict[str, type[Any]] = {}
        self._waiters = FinishWaiters(self)
        #: The LISTEN/NOTIFY channel of this store's jobs table; known once started.
        self.channel = f"pqrun:{self.schema or 'public'}"
        # The connection of the transaction() or connection() block the code is in, so
        # that store calls inside it join it instead of taking a second connection.
        # Tasks started inside the block inherit it, but only while the block is open.
        self._current: contextvars.ContextVar[_Block | None] = contextvars.ContextVar(
            f"pqrun_store_{id(self)}_connection", default=None
        )
        #: Who hears about enqueues here and runs by workers on this store (metrics).
        self.observers: tuple[JobObserver, ...] = ()

    def __repr__(self) -> str:
        if self.schema is not None:
            return f"PgJobStore({redact_dsn(self.dsn)!r}, schema={self.schema!r})"
        return f"PgJobStore({redact_dsn(self.dsn)!r})"

    def _where(self) -> str:
        """Where this store's jobs table is, for messages."""
        if self.schema is not None:
            return f"schema {self.schema!r} of {redact_dsn(self.dsn)}"
        return f"the search_path of {redact_dsn(self.dsn)}"

    def _setup_hint(self) -> str:
        option = f" --schema {self.schema}" if self.schema is not None else ""
        return f"apply the schema first: `pqrun setup{option}`, or `await store.setup()`" + (
            "" if self.schema is not None else ', or psql "$DATABASE_URL" -f ddl.sql'
        )

    def observe(self, observer: JobObserver) -> None:
        """Tell ``observer`` about enqueues through this store and runs by its workers.

        ``pqrun.metrics`` attaches its Prometheus metrics this way. Adding the same
        observer twice does nothing.
        """
        if not isinstance(observer, JobObserver):
            raise TypeError(f"observe() needs a pqrun.observers.JobObserver, got {observer!r}")
        if observer not in self.observers:
            self.observers = (*self.observers, observer)

    # -- lifecycle -------------------------------------------------------------------

    @property
    def started(self) -> bool:
        """True while the connection pool is open (in the running event loop)."""
        return self._pool is not None and self._pool_loop is _running_loop()

    def want_connections(self, count: int) -> None:
        """Ask for a pool of at least ``count`` + 2 connections (Workers call this).

        Has no effect once the pool is open or when ``max_size`` was given explicitly.
        """
        self._connections_wanted += count

    async def start(self) -> None:
        """Open the pool and check that the schema is there. Calling it again does nothing."""
        if self.started and self._schema_checked:
            return
        pool = await self._open_pool()
        try:
            # With min_size=0 the pool opened without a connection: this is the first.
            async with pool.acquire(timeout=self.statement_timeout) as conn:
                schema = await conn.fetchval(JOBS_SCHEMA, timeout=self.statement_timeout)
                objects = await conn.fetchrow(SCHEMA_OBJECTS, timeout=self.statement_timeout)
        except CONNECT_ERRORS as exc:
            await self.close()
            raise self._cannot_connect(exc) from self._cause(exc)
        except BaseException:
            await self.close()
            raise
        if schema is None or objects is None:
            await self.close()
            raise SchemaMissing(f"the table 'jobs' is not in {self._where()}; {self._setup_hint()}")
        missing = _missing_objects(objects)
        # Without these, pqrun's statements fail; without an index or a trigger, they
        # are slower or wake workers later, and `pqrun check` says so.
        fatal = [thing for thing in missing if thing.startswith(("column", "table"))]
        if fatal:
            await self.close()
            raise SchemaMissing(
                f"the schema in {self._where()} is older than this version of pqrun: it "
                f"lacks {', '.join(fatal)}; apply ddl.sql again (safe to repeat): "
                f"{self._setup_hint().removeprefix('apply the schema first: ')}"
            )
        if missing:
            logger.warning(
                "the schema in %s lacks %s; apply ddl.sql again (pqrun setup)",
                self._where(),
                ", ".join(missing),
            )
        self.channel = schema
        self._schema_checked = True

    async def _open_pool(self) -> asyncpg.Pool[Any]:
        loop = asyncio.get_running_loop()
        if self._pool is not None and self._pool_loop is loop:
            return self._pool
        if self._pool is not None:
            # Opened under another event loop (an earlier asyncio.run()): unusable here.
            with contextlib.suppress(RuntimeError):  # that loop may be closed already
                self._pool.terminate()
            self._pool = None
        max_size = self._max_size or max(10, self._connections_wanted + 2)
        _quiet_pool_floor_warnings()
        # Built first, then awaited: a ValueError from the pool's own arguments is the
        # caller's to see as is; one while connecting is about the DSN.
        opening = asyncpg.create_pool(
            self.dsn,
            min_size=min(self._min_size, max_size),
            max_size=max_size,
            timeout=self._connect_timeout,
            **self._pool_kwargs,
        )
        try:
            pool = await opening
        except CONNECT_ERRORS as exc:
            raise self._cannot_connect(exc) from self._cause(exc)
        if self._pool is not None and self._pool_loop is loop:
            await pool.close()  # another task opened one while this one connected
            return self._pool
        self._pool, self._pool_loop = pool, loop
        self._schema_checked = False
        return pool

    async def close(self, within: float = 10.0) -> None:
        """Close the pool, waiting up to ``within`` s for connections in use to come back.

        Past that they are closed anyway. The store opens a new pool if used again.
        """
        await self._waiters.close()
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if self._pool_loop is not _running_loop():
            with contextlib.suppress(RuntimeError):
                pool.terminate()
            return
        try:
            await asyncio.wait_for(asyncio.shield(pool.close()), timeout=within)
        except TimeoutError:
            logger.warning("closing the pool took over %.0fs; closing connections at once", within)
            pool.terminate()

    async def __aenter__(self) -> PgJobStore:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def setup(self) -> None:
        """Apply ddl.sql (safe to repeat) and open the pool.

        With ``schema=``, the schema is created first if missing and everything goes in
        it; otherwise into the first schema of the connection's search_path.
        """
        pool = await self._open_pool()
        async with pool.acquire(timeout=self.statement_timeout) as conn:
            if self.schema is not None:
                create = await conn.fetchval(CREATE_SCHEMA_STATEMENT, self.schema)
                await conn.execute(create)
            await conn.execute(ddl_sql())
        await self.start()

    async def listen(self, on_payload: Callable[[str], None]) -> Connection:
        """A dedicated connection LISTENing on this store's channel (for workers).

        ``on_payload`` gets each notification's payload: empty when jobs are due now,
        else the epoch of the earliest ``run_after`` of a batch of future jobs.
        """
        conn = await self.dedicated_connection("a LISTEN connection")
        try:
            await conn.add_listener(
                self.channel, lambda _c, _pid, _ch, payload: on_payload(payload)
            )
        except BaseException:
            conn.terminate()
            raise
        return conn

    async def dedicated_connection(
        self, purpose: str, server_settings: Mapping[str, str] | None = None
    ) -> Connection:
        """A connection of its own, outside the pool, with the store's settings (schema).

        Workers keep their liveness, their outcome writes and their LISTEN on such
        connections, so that handlers holding every pooled connection cannot starve them.
        The caller closes it. ``server_settings`` are added to the store's own.
        """
        await self.start()
        connect_kwargs = {k: v for k, v in self._pool_kwargs.items() if k not in POOL_ONLY}
        if server_settings:
            connect_kwargs["server_settings"] = {
                **connect_kwargs.get("server_settings", {}),
                **server_settings,
            }
        try:
            conn: asyncpg.Connection[Any] = await asyncpg.connect(
                self.dsn,
                timeout=self._connect_timeout,
                connection_class=_DedicatedConnection,
                **connect_kwargs,
            )
        except CONNECT_ERRORS as exc:
            raise DatabaseUnavailable(
                f"cannot open {purpose} to {redact_dsn(self.dsn)}: {self._error_text(exc)}"
            ) from self._cause(exc)
        return conn

    # -- connections -----------------------------------------------------------------

    def _joined(self) -> Connection | None:
        """The connection of the open block the code runs in, if any."""
        block = self._current.get()
        return block.conn if block is not None and block.open else None

    def _cannot_connect(self, exc: BaseException) -> DatabaseUnavailable:
        """Raise it ``from self._cause(exc)``."""
        where = f"cannot connect to PostgreSQL at {redact_dsn(self.dsn)}"
        if isinstance(exc, asyncpg.InvalidCatalogNameError):
            return DatabaseUnavailable(
                f"{where}: {self._error_text(exc)}. Create the database or fix the DSN"
            )
        if URL_DSN.match(self.dsn) is None:
            # asyncpg reads URLs only; libpq's host=... form fails as "invalid DSN".
            where += " (write the DSN as a URL: postgresql://user:password@host:port/db)"
        return DatabaseUnavailable(
            f"{where}: {self._error_text(exc)}. Check that the server is running and "
            "that the DSN (dsn=, PQRUN_DSN or DATABASE_URL) names the right host, port, "
            "user and database"
        )

    def _unavailable(self, exc: BaseException) -> DatabaseUnavailable:
        """Raise it ``from self._cause(exc)``."""
        return DatabaseUnavailable(
            f"lost the connection to PostgreSQL at {redact_dsn(self.dsn)}: {self._error_text(exc)}"
        )

    def _error_text(self, exc: BaseException) -> str:
        """``Type: text`` of ``exc`` without this store's passwords (``error_text``)."""
        return error_text(exc, self.dsn, self._pool_kwargs.get("password"))

    def _cause(self, exc: BaseException) -> BaseException | None:
        return cause_without_secrets(exc, self.dsn, self._pool_kwargs.get("password"))

    @asynccontextmanager
    async def _pooled(self) -> AsyncIterator[Connection]:
        """A pooled connection; only getting it is translated into pqrun's errors."""
        if not self.started:
            await self.start()
        assert self._pool is not None
        try:
            conn = await self._pool.acquire(timeout=self.statement_timeout)
        except (*CONNECTION_ERRORS, *DSN_ERRORS) as exc:  # DSN: the first connection of a
            raise self._unavailable(exc) from self._cause(exc)  # pool opened with min_size=0
        try:
            yield conn
        except BaseException:
            # Releasing a connection whose query was cancelled can itself time out; that
            # must not replace the error (or the cancellation) already on its way.
            with contextlib.suppress(Exception):
                await self._pool.release(conn, timeout=self.statement_timeout)
            raise
        await self._pool.release(conn, timeout=self.statement_timeout)

    @asynccontextmanager
    async def _acquire(
        self, conn: Connection | None = None, *, join: bool = True
    ) -> AsyncIterator[Connection]:
        """A connection for pqrun's own statements, whose errors it translates.

        ``conn`` is a connection of the caller's: with a ``schema``, its search_path is
        pointed at the store's schema for the statement and put back after. Without it,
        the connection of an enclosing ``connection()``/``transaction()`` block, unless
        ``join`` is false; else one from the pool.
        """
        given = conn
        conn = conn or (self._joined() if join else None)
        try:
            if (
                given is not None
                and self._search_path is not None
                # In the schema already. (Not isinstance(): asyncpg's Connection class
                # says every connection is an instance of each of its subclasses.)
                and type(given) is not _DedicatedConnection
            ):
                async with self._in_schema(given):
                    yield given
            elif conn is not None:
                yield conn
            else:
                async with self._pooled() as pooled:
                    yield pooled
        except asyncpg.UndefinedTableError as exc:
            if '"jobs"' not in str(exc):
                raise
            raise SchemaMissing(
                f"the table 'jobs' is gone from {self._where()}: {self._setup_hint()}"
            ) from exc
        except ClientDataError:
            raise  # a value the driver cannot send: about the data, not the connection
        except CONNECTION_ERRORS as exc:
            raise self._unavailable(exc) from self._cause(exc)

    @asynccontextmanager
    async def _in_schema(self, conn: Connection) -> AsyncIterator[None]:
        """Run the block with ``conn``'s search_path set to the store's schema alone."""
        assert self._search_path is not None
        row = await conn.fetchrow(
            SWITCH_SEARCH_PATH, self._search_path, timeout=self.statement_timeout
        )
        assert row is not None
        if row["was"] == row["now"]:
            yield  # already there (a connection of this store's own pool)
            return
        try:
            yield
        finally:
            # After an error inside the caller's transaction the restore cannot run, and
            # need not: the rollback puts the search_path back as well.
            with contextlib.suppress(asyncpg.InFailedSQLTransactionError, *CONNECTION_ERRORS):
                await conn.fetchval(RESTORE_SEARCH_PATH, row["was"], timeout=self.statement_timeout)

    @asynccontextmanager
    async def _joinable(self, conn: Connection) -> AsyncIterator[Connection]:
        block = _Block(conn)
        token = self._current.set(block)
        try:
            yield conn
        finally:
            block.open = False  # a task that outlives the block must not use its connection
            self._current.reset(token)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A pooled connection for your own queries.

        Store calls made inside the block by the same task use this connection too, so
        the block never needs a second one. Inside ``transaction()``: its connection.
        Errors raised by your own code in the block reach you unchanged.
        """
        joined = self._joined()
        if joined is not None:
            yield joined
            return
        async with self._pooled() as conn, self._joinable(conn):
            yield conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """A connection inside a transaction: committed on success, rolled back on error.

        Store calls made inside the block by the same task (``enqueue``, ``cancel``, ...)
        join this transaction, so a job enqueued here exists if and only if it commits,
        and a handler never needs a second pooled connection. Nested blocks become
        savepoints. One connection runs one statement at a time: inside the block, await
        store calls one after another rather than gathering them. Tasks you start inside
        the block join it while it is open, and use their own connections after.
        """
        joined = self._joined()
        if joined is not None:
            async with joined.transaction():
                yield joined
            return
        async with self._pooled() as conn, conn.transaction(), self._joinable(conn):
            yield conn

    # -- enqueue ---------------------------------------------------------------------

    def register_payload_model(self, job_type: str, model: type[Any]) -> None:
        """Validate the payload of every ``job_type`` job enqueued here against ``model``.

        A Worker does this for each handler that declares a payload model, so apps that
        enqueue through the worker's store get the check without asking.
        """
        if not is_model_class(model):
            raise TypeError(
                f"the payload model for {job_type!r} must be a Pydantic model class, got {model!r}"
            )
        self._payload_models[job_type] = model

    def _checked_payload(self, job_type: str, payload: Any) -> Any:
        model = self._payload_models.get(job_type) if isinstance(job_type, str) else None
        if model is None or isinstance(payload, model):
            return payload
        if is_pydantic_model(payload) or isinstance(payload, RawJSON):
            # Another model, or JSON text: checked as the JSON the handler will read.
            try:
                data = json.loads(encode_json(payload, f"payload of {job_type!r}"))
            except ValueError as exc:
                raise PayloadInvalid(
                    f"the payload of job type {job_type!r} is not valid JSON: {exc}"
                ) from exc
            validate(model, data, job_type)
            return payload
        return validate(model, {} if payload is None else payload, job_type)

    async def enqueue(
        self,
        job_type: str,
        payload: Any = None,
        *,
        priority: int = 0,
        run_after: datetime | timedelta | None = None,
        dedupe_key: str | None = None,
        max_attempts: int = 5,
        timeout_seconds: int | timedelta | None = None,
        concurrency_key: str | None = None,
        conn: Connection | None = None,
    ) -> int:
        """Add a job and return its id.

        ``run_after`` is a datetime (a naive one is read as local time) or a delay from
        the database's ``now()``. With a ``dedupe_key`` that an active (READY or RUNNING)
        job already has, nothing is added and that job's id is returned. ``conn`` (or an
        enclosing ``store.transaction()``) makes the job part of your transaction.
        ``timeout_seconds`` is how long one run may take: the worker cancels a handler
        that runs longer (default: no deadline). Jobs with the same ``concurrency_key``
        count together against their handler's ``concurrency_limit_per_key``.

        ``payload`` may be a Pydantic model instance; a dict is validated here when a
        payload model is known for ``job_type`` (see ``register_payload_model``), and an
        invalid one raises PayloadInvalid before anything is written.
        """
        row = _new_job_row(
            job_type,
            self._checked_payload(job_type, payload),
            priority,
            run_after,
            dedupe_key,
            max_attempts,
            timeout_seconds,
            concurrency_key,
        )
        if tracing.AVAILABLE and tracing.recording():
            with tracing.enqueue_span(job_type) as trace_context:
                job_id = await self._enqueue_row(row, trace_context, conn)
                tracing.set_enqueued_id(job_id)
        else:
            job_id = await self._enqueue_row(row, None, conn)
        for observer in self.observers:
            _tell(observer.enqueued, job_type, 1)
        return job_id

    async def _enqueue_row(
        self, row: tuple[Any, ...], trace_context: str | None, conn: Connection | None
    ) -> int:
        async with self._acquire(conn) as c:
            for _ in range(DEDUPE_TRIES):
                job_id: int | None = await c.fetchval(
                    ENQUEUE, *row, trace_context, timeout=self.statement_timeout
                )
                if job_id is not None:
                    return job_id
        raise JobConflict(_dedupe_unresolved(row[5]))

    async def enqueue_many(
        self, jobs: Iterable[Mapping[str, Any]], *, conn: Connection | None = None
    ) -> list[int]:
        """Add many jobs in one statement and return their ids, in the order given.

        Each item is a dict of ``enqueue``'s arguments: ``{"job_type": "send_email",
        "payload": {...}, "priority": 5, "dedupe_key": "..."}``; only ``job_type`` is
        required. Dedupe keys work per item as in ``enqueue``: an item whose key an active
        job holds, or an earlier item of the same call holds, gets that job's id.
        A bad item raises before anything is written.
        """
        rows: list[tuple[Any, ...]] = []
        position_of_key: dict[str, int] = {}
        source: list[int] = []  # for each item, the row that carries it
        for number, item in enumerate(jobs):
            try:
                if "job_type" in item:
                    checked = self._checked_payload(item["job_type"], item.get("payload"))
                    item = {**item, "payload": checked}
                row = _new_job_row(**item)
            except TypeError as exc:
                raise TypeError(f"enqueue_many item {number}: {exc}") from exc
            except PayloadInvalid as exc:
                raise PayloadInvalid(f"enqueue_many item {number}: {exc}") from exc
            except ValueError as exc:
                raise ValueError(f"enqueue_many item {number}: {exc}") from exc
            key = row[5]
            if key is not None and key in position_of_key:
                source.append(position_of_key[key])
                continue
            if key is not None:
                position_of_key[key] = len(rows)
            source.append(len(rows))
            rows.append(row)
        if not rows:
            return []
        if tracing.AVAILABLE and tracing.recording():
            types = sorted({row[0] for row in rows})
            with tracing.enqueue_span(types[0] if len(types) == 1 else "*", len(rows)) as trace:
                ids = await self._enqueue_rows(rows, source, trace, conn)
        else:
            ids = await self._enqueue_rows(rows, source, None, conn)
        if self.observers:
            per_type: dict[str, int] = {}
            for row in rows:
                per_type[row[0]] = per_type.get(row[0], 0) + 1
            for observer in self.observers:
                for job_type, count in per_type.items():
                    _tell(observer.enqueued, job_type, count)
        return ids

    async def _enqueue_rows(
        self,
        rows: list[tuple[Any, ...]],
        source: list[int],
        trace_context: str | None,
        conn: Connection | None,
    ) -> list[int]:
        ids: list[int | None] = [None] * len(rows)
        pending = list(range(len(rows)))
        async with self._acquire(conn) as c:
            for _ in range(DEDUPE_TRIES):
                columns = [list(column) for column in zip(*(rows[i] for i in pending), strict=True)]
                found = await c.fetch(
                    ENQUEUE_MANY, *columns, trace_context, timeout=self.statement_timeout
                )
                for position, record in zip(pending, found, strict=True):
                    ids[position] = record["id"]
                # A key held by a job committed after the statement's snapshot: ask again.
                pending = [i for i in pending if ids[i] is None]
                if not pending:
                    return [ids[position] for position in source]  # type: ignore[misc]
        raise JobConflict(_dedupe_unresolved(rows[pending[0]][5]))

    # -- the worker's moves ----------------------------------------------------------

    async def pickup_batch(
        self, worker_id: str, job_types: Sequence[str] | None, limit: int
    ) -> list[Job]:
        """Claim up to ``limit`` due READY jobs of ``job_types`` (None: any type)."""
        async with self._acquire() as conn:
            rows = await conn.fetch(
                PICKUP,
                worker_id,
                None if job_types is None else list(job_types),
                limit,
                timeout=self.statement_timeout,
            )
            jobs = await self._readable(conn, rows)
        # RETURNING does not keep the order of the CTE.
        jobs.sort(key=lambda j: (-j.priority, j.run_after, j.id))
        return jobs

    async def _readable(self, conn: Connection, rows: Sequence[Any]) -> list[Job]:
        """The claimed rows as Jobs, read one by one; a row that cannot be read fails alone.

        The claim has committed: nothing here may raise, or the readable jobs would be
        stranded RUNNING with nobody to run them.
        """
        jobs: list[Job] = []
        for row in rows:
            try:
                jobs.append(Job.from_record(row))
            except Exception as exc:  # json too deep, a number Python refuses, ...
                await self._fail_unreadable(conn, row, exc)
        return jobs

    async def _fail_unreadable(self, conn: Connection, row: Any, exc: Exception) -> None:
        reason = _storable(f"its payload could not be read: {type(exc).__name__}: {str(exc)[:300]}")
        logger.error(
            "job %s (%s) FAILED: %s",
            row["id"],
            row["job_type"],
            reason,
            extra={"job_id": row["id"], "job_type": row["job_type"], "outcome": "FAILED"},
        )
        try:
            await conn.fetchval(
                MARK_ERROR,
                row["id"],
                row["locked_by"],
                row["attempts"],
                row["lease_id"],
                reason,
                True,  # terminal: reading it again would fail the same way
                timedelta(0),
                None,
                timeout=self.statement_timeout,
            )
        except Exception as write_exc:
            logger.error(
                "job %s: could not record that its payload is unreadable (%s: %s); the "
                "reaper takes it back once its claim is stale",
                row["id"],
                type(write_exc).__name__,
                write_exc,
            )

    async def pickup_limited(
        self, worker_id: str, job_type: str, handler: Handler, limit: int
    ) -> tuple[list[Job], float | None]:
        """Claim up to ``limit`` due jobs of ``job_type`` within ``handler``'s limits.

        Returns the jobs and, when this type cannot be claimed now (its rate limit is
        used up while jobs are due, or another worker is claiming it), in how many
        seconds to look again. Claims of one limited type are made one at a time across
        all workers.
        """
        period = handler.rate_period
        assert isinstance(period, timedelta)
        async with self._acquire() as conn:
            async with conn.transaction():
                locked = await conn.fetchval(
                    LIMIT_LOCK, f"{self.channel}:limits:{job_type}", timeout=self.statement_timeout
                )
                if not locked:
                    return [], LIMIT_BUSY_RETRY_SECONDS
                rows = await conn.fetch(
                    PICKUP_LIMITED,
                    worker_id,
                    job_type,
                    limit,
                    handler.concurrency_limit,
                    handler.concurrency_limit_per_key,
                    handler.rate_limit,
                    period,
                    PER_KEY_WINDOW,
                    timeout=self.statement_timeout,
                )
            # After the commit: a row that cannot be read is failed in a move of its own.
            jobs = await self._readable(conn, [row for row in rows if row["id"] is not None])
        jobs.sort(key=lambda j: (-j.priority, j.run_after, j.id))
        return jobs, rows[0]["room_in_seconds"] if rows else None

    async def wake_workers(self) -> None:
        """Wake the idle workers of this queue, as an insert would."""
        async with self._acquire() as conn:
            await conn.execute(WAKE_WORKERS, self.channel, timeout=self.statement_timeout)

    async def pickup(self, worker_id: str, job_types: Sequence[str] | None = None) -> Job | None:
        """Claim the next due READY job for ``worker_id``, or return None."""
        jobs = await self.pickup_batch(worker_id, job_types, 1)
        return jobs[0] if jobs else None

    async def mark_done(
        self,
        job: Job | int,
        result: Any = None,
        duration_ms: int | None = None,
        *,
        worker_id: str | None = None,
        attempt: int | None = None,
    ) -> bool:
        """RUNNING -> DONE, storing ``result`` as JSON.

        Pass the Job that ``pickup`` returned (or its id with ``worker_id`` and
        ``attempt``). Returns False, changing nothing, when that claim no longer owns
        the job (it was reaped, cancelled or picked again).
        """
        job_id, owner, attempt_no, lease = _owner(job, worker_id, attempt)
        result_json = encode_json(result, f"result of job {job_id}")
        async with self._acquire() as conn:
            status = await conn.execute(
                MARK_DONE,
                job_id,
                owner,
                attempt_no,
                lease,
                result_json,
                duration_ms,
                timeout=self.statement_timeout,
            )
        return status == "UPDATE 1"

    async def mark_done_batch(
        self, done: Sequence[tuple[Job, str, int]], *, conn: Connection | None = None
    ) -> set[tuple[int, int | None]]:
        """RUNNING -> DONE for many jobs in one statement: (job, result JSON text, duration_ms).

        Each row is guarded by its own claim. Returns the (id, lease_id) of the claims
        that moved their job; a claim missing from the set no longer owned its job, which
        was left as it was.
        """
        if not done:
            return set()
        # One lock order (by id) for every multi-row statement of a worker, so that two
        # of them never wait for each other.
        done = sorted(done, key=lambda item: item[0].id)
        async with self._acquire(conn) as c:
            rows = await c.fetch(
                MARK_DONE_BATCH,
                [job.id for job, _, _ in done],
                [job.locked_by for job, _, _ in done],
                [job.attempts for job, _, _ in done],
                [job.lease_id for job, _, _ in done],
                [result for _, result, _ in done],
                [duration for _, _, duration in done],
                timeout=self.statement_timeout,
            )
        return {(row["id"], row["lease_id"]) for row in rows}

    async def mark_error(
        self,
        job: Job | int,
        error: str,
        retry_after: timedelta | None = None,
        terminal: bool = False,
        *,
        worker_id: str | None = None,
        attempt: int | None = None,
        duration_ms: int | None = None,
        conn: Connection | None = None,
    ) -> JobStatus | None:
        """RUNNING -> READY again after ``retry_after``, or FAILED.

        The job fails when ``terminal`` is true or its attempts are used up. Returns the
        new status, or None (changing nothing) when this claim no longer owns the job.
        """
        job_id, owner, attempt_no, lease = _owner(job, worker_id, attempt)
        async with self._acquire(conn) as c:
            status = await c.fetchval(
                MARK_ERROR,
                job_id,
                owner,
                attempt_no,
                lease,
                error,
                terminal,
                retry_after or timedelta(0),
                duration_ms,
                timeout=self.statement_timeout,
            )
        return None if status is None else JobStatus(status)

    async def snooze(
        self,
        job: Job | int,
        after: timedelta,
        *,
        worker_id: str | None = None,
        attempt: int | None = None,
        duration_ms: int | None = None,
        conn: Connection | None = None,
    ) -> bool:
        """RUNNING -> READY after ``after``, without counting the attempt.

        False, changing nothing, when this claim no longer owns the job.
        """
        job_id, owner, attempt_no, lease = _owner(job, worker_id, attempt)
        async with self._acquire(conn) as c:
            status = await c.execute(
                SNOOZE,
                job_id,
                owner,
                attempt_no,
                lease,
                after,
                duration_ms,
                timeout=self.statement_timeout,
            )
        return status == "UPDATE 1"

    async def release(self, jobs: Sequence[Job], reason: str) -> list[int]:
        """RUNNING -> READY at once for jobs this worker claimed but will not finish.

        Used on shutdown. Returns the ids that were still owned and so were released.
        """
        if not jobs:
            return []
        jobs = sorted(jobs, key=lambda job: job.id)  # the one lock order, as in completions
        async with self._acquire() as conn:
            rows = await conn.fetch(
                RELEASE,
                [j.id for j in jobs],
                [j.locked_by for j in jobs],
                [j.attempts for j in jobs],
                [j.lease_id for j in jobs],
                reason,
                self.channel,
                timeout=self.statement_timeout,
            )
        return [row["id"] for row in rows]

    async def reap_stale(
        self,
        default_stale_after: timedelta = timedelta(seconds=30),
        *,
        reachable_for: timedelta | None = None,
    ) -> list[tuple[int, JobStatus]]:
        """Take back RUNNING jobs that gave no sign of life for ``default_stale_after``.

        A worker's heartbeat lists the claims it holds every few seconds; a job whose
        claim is older than ``default_stale_after`` and that no heartbeat of that age
        lists is taken back: to READY when attempts are left, else to FAILED. So are
        RUNNING rows with no owner. Workers whose heartbeat is that old are removed from
        the registry. With ``reachable_for``, nothing is taken back unless the workers'
        heartbeats, together, have reached the database all through that long (workers
        pass three heartbeat intervals: after an outage, every live worker has sent one
        again by then). One
        reaper acts at a time: while another holds the queue's reaper lock this returns
        [] at once. Returns (id, new status) for each job taken back.
        """
        async with self._acquire() as conn, conn.transaction():
            if not await conn.fetchval(REAPER_LOCK, self.channel, timeout=self.statement_timeout):
                return []
            try:
                async with conn.transaction():  # a savepoint
                    rows = await conn.fetch(
                        REAP_STALE,
                        default_stale_after,
                        reachable_for,
                        _heartbeat_gap(default_stale_after),
                        None,
                        timeout=self.statement_timeout,
                    )
            except asyncpg.PostgresError as exc:
                if not (exc.sqlstate or "").startswith(REAP_ROW_REFUSALS):
                    raise
                # One row refused the move (a trigger of yours, say): reap the others one
                # by one, so that one bad row cannot keep every dead worker's jobs.
                rows = await self._reap_one_by_one(conn, default_stale_after, reachable_for)
            gone = await conn.fetch(
                FORGET_DEAD_WORKERS, default_stale_after, timeout=self.statement_timeout
            )
        for worker in gone:
            logger.warning(
                "worker %s gave no heartbeat for %s: removed from the registry",
                worker["worker_id"],
                default_stale_after,
            )
        for row in rows:
            logger.warning(
                "reaped job %s: attempt %s by %s gave no heartbeat; now %s",
                row["id"],
                row["attempts"],
                row["locked_by"],
                row["status"],
                extra={
                    "job_id": row["id"],
                    "job_type": row["job_type"],
                    "attempt": row["attempts"],
                    "outcome": "reaped",
                },
            )
        return [(row["id"], JobStatus(row["status"])) for row in rows]

    async def _reap_one_by_one(
        self, conn: Connection, stale_after: timedelta, reachable_for: timedelta | None
    ) -> list[Any]:
        candidates = await conn.fetch(REAP_CANDIDATES, stale_after, timeout=self.statement_timeout)
        rows: list[Any] = []
        for candidate in candidates:
            try:
                async with conn.transaction():
                    rows += await conn.fetch(
                        REAP_STALE,
                        stale_after,
                        reachable_for,
                        _heartbeat_gap(stale_after),
                        candidate["id"],
                        timeout=self.statement_timeout,
                    )
            except asyncpg.PostgresError as exc:
                if not (exc.sqlstate or "").startswith(REAP_ROW_REFUSALS):
                    raise
                logger.error(
                    "the reaper cannot take back job %s: the database refuses the move "
                    "(%s: %s); it stays RUNNING until the refusal is lifted",
                    candidate["id"],
                    type(exc).__name__,
                    str(exc).split("\n", 1)[0][:300],
                    extra={"job_id": candidate["id"]},
                )
        return rows

    async def prune(
        self,
        keep_done: timedelta | None = timedelta(days=1),
        keep_failed: timedelta | None = timedelta(days=7),
        *,
        batch_size: int = 1000,
        max_batches: int | None = None,
    ) -> Pruned:
        """Delete finished jobs older than their retention, in small batches.

        DONE jobs go ``keep_done`` after they finished, FAILED and CANCELLED ones
        ``keep_failed`` after (None keeps them for ever). Each batch of at most
        ``batch_size`` rows is its own short transaction, so no lock is held long; at
        most ``max_batches`` batches run (None: until nothing is due). One pruner runs at
        a time per queue: while another holds the prune lock this stops and says
        ``busy``. Needs DELETE on the jobs table.
        """
        _check_int("batch_size", batch_size, 1)
        if max_batches is not None:
            _check_int("max_batches", max_batches, 1)
        plan = [
            (status, keep)
            for status, keep in (
                (JobStatus.DONE, keep_done),
                (JobStatus.FAILED, keep_failed),
                (JobStatus.CANCELLED, keep_failed),
            )
            if keep is not None
        ]
        deleted = dict.fromkeys(JobStatus, 0)

        def pruned(**flags: bool) -> Pruned:
            return Pruned(
                deleted[JobStatus.DONE],
                deleted[JobStatus.FAILED],
                deleted[JobStatus.CANCELLED],
                **flags,
            )

        batches = 0
        for status, keep in plan:
            while True:
                if max_batches is not None and batches >= max_batches:
                    return pruned(more=True)
                batches += 1
                async with self._acquire() as conn, conn.transaction():
                    if not await conn.fetchval(
                        PRUNE_LOCK, self.channel, timeout=self.statement_timeout
                    ):
                        return pruned(busy=True)
                    outcome = await conn.execute(
                        PRUNE_FINISHED, status.value, keep, batch_size,
                        timeout=self.statement_timeout,
                    )  # fmt: skip
                count = int(outcome.split()[-1])  # "DELETE <n>"
                deleted[status] += count
                if count < batch_size:
                    break
        return pruned()

    async def heartbeat(
        self,
        worker_id: str,
        jobs: Sequence[Job],
        *,
        job_types: Sequence[str] = (),
        concurrency: int = 1,
        conn: Connection | None = None,
        within: float | None = None,
        instance: str | None = None,
        stale_after: timedelta = timedelta(seconds=30),
    ) -> set[int]:
        """Register ``worker_id`` (or renew it) as alive and holding the claims of ``jobs``.

        While these heartbeats go on, the reaper leaves those jobs alone. Writes only
        the worker's row in ``job_workers``: it never waits for a lock on a job. Returns
        the ids of the jobs that are still this worker's claims (a missing one was
        cancelled or taken back). ``conn``: a connection of the caller's (a worker uses
        one of its own). ``instance``: a token of the running worker; while a worker
        with the same ``worker_id`` and another token has sent a heartbeat within
        ``stale_after``, this raises WorkerIdInUse.
        """
        claims = await self._heartbeat_claims(
            worker_id,
            jobs,
            job_types=job_types,
            concurrency=concurrency,
            conn=conn,
            within=within,
            instance=instance,
            stale_after=stale_after,
        )
        return {job_id for job_id, _lease in claims}

    async def _heartbeat_claims(
        self,
        worker_id: str,
        jobs: Sequence[Job],
        *,
        job_types: Sequence[str],
        concurrency: int,
        conn: Connection | None,
        within: float | None,
        instance: str | None = None,
        stale_after: timedelta = timedelta(seconds=30),
    ) -> set[tuple[int, int | None]]:
        """heartbeat(), answering with the (id, lease_id) of the claims still owned."""
        ids, leases = _claims(jobs)
        async with self._acquire(conn) as c:
            rows = await c.fetch(
                HEARTBEAT,
                worker_id,
                socket.gethostname(),
                os.getpid(),
                list(job_types),
                concurrency,
                ids,
                leases,
                instance,
                stale_after,
                _heartbeat_gap(stale_after),
                timeout=self.statement_timeout if within is None else within,
            )
            if not rows[0]["registered"]:
                other = await c.fetchrow(WORKER_ROW, worker_id, timeout=self.statement_timeout)
                raise WorkerIdInUse(
                    f"worker_id {worker_id!r} is in use by another live worker"
                    + (
                        f" (host {other['host']!r}, pid {other['pid']}, started "
                        f"{other['started_at']:%Y-%m-%d %H:%M:%S %Z})"
                        if other is not None
                        else ""
                    )
                    + ": give each worker its own worker_id (Worker(worker_id=...), "
                    "`pqrun worker --worker-id`), or leave it to the default"
                )
        return {(row["id"], row["lease_id"]) for row in rows if row["id"] is not None}

    async def still_owned(
        self,
        worker_id: str,
        jobs: Sequence[Job],
        *,
        conn: Connection | None = None,
        within: float | None = None,
    ) -> set[tuple[int, int | None]]:
        """The (id, lease_id) of those ``jobs`` whose claim still owns the job.

        A read without locks: it never waits for a session that holds a job's row.
        """
        if not jobs:
            return set()
        ids, leases = _claims(jobs)
        async with self._acquire(conn) as c:
            rows = await c.fetch(
                STILL_OWNED,
                worker_id,
                ids,
                leases,
                timeout=self.statement_timeout if within is None else within,
            )
        return {(row["id"], row["lease_id"]) for row in rows}

    async def leave(self, worker_id: str, *, instance: str | None = None) -> None:
        """Take ``worker_id`` (the one whose heartbeats carried ``instance``) off the
        registry of live workers."""
        async with self._acquire() as conn:
            await conn.execute(LEAVE, worker_id, instance, timeout=self.statement_timeout)

    async def list_workers(self) -> list[dict[str, Any]]:
        """The registered workers: id, host, pid, job types, concurrency, started, heartbeat."""
        async with self._acquire() as conn:
            rows = await conn.fetch(LIST_WORKERS, timeout=self.statement_timeout)
        return [dict(row) for row in rows]

    # -- schedules -------------------------------------------------------------------

    async def declare_schedules(self, schedules: Sequence[Schedule]) -> None:
        """Store these schedules' definitions (a worker does this when it starts)."""
        async with self._acquire() as conn, conn.transaction():
            now: datetime = await conn.fetchval(DATABASE_NOW, timeout=self.statement_timeout)
            for schedule in schedules:
                await conn.execute(
                    DECLARE_SCHEDULE,
                    schedule.name,
                    schedule.job_type,
                    schedule.cron,
                    schedule.every_seconds,
                    schedule.timezone,
                    schedule.payload_json,
                    schedule.priority,
                    schedule.max_attempts,
                    schedule.timeout_seconds,
                    schedule.missed,
                    schedule.first_tick(now),
                    timeout=self.statement_timeout,
                )

    async def fire_due_schedules(self, schedules: Sequence[Schedule]) -> tuple[list[int], float]:
        """Enqueue the due ticks of ``schedules``; return the job ids and the seconds until
        the next tick of any of them.

        Each due schedule is locked, its job enqueued and its next tick stored in one
        transaction: however many workers call this at once, a tick is enqueued once.
        """
        by_name = {schedule.name: schedule for schedule in schedules}
        names = list(by_name)
        enqueued: list[int] = []
        async with self._acquire() as conn:
            async with conn.transaction():
                due = await conn.fetch(DUE_SCHEDULES, names, timeout=self.statement_timeout)
                for row in due:
                    schedule = by_name[row["name"]]
                    tick: datetime = row["next_run_at"]
                    now: datetime = row["now"]
                    next_tick = schedule.next_tick(tick, now)
                    job_id = None
                    if schedule.missed == "once" or not schedule.was_missed(tick, now):
                        try:
                            # A savepoint: a tick that cannot be enqueued (a payload its
                            # handler's model refuses) holds up no other schedule.
                            async with conn.transaction():
                                job_id = await self.enqueue(
                                    schedule.job_type,
                                    RawJSON(schedule.payload_json),
                                    priority=schedule.priority,
                                    max_attempts=schedule.max_attempts,
                                    timeout_seconds=schedule.timeout_seconds,
                                    dedupe_key=f"schedule:{schedule.name}:{tick.isoformat()}",
                                    conn=conn,
                                )
                            enqueued.append(job_id)
                        except (ValueError, TypeError, JobConflict, asyncpg.DataError) as exc:
                            logger.error(
                                "schedule %r: the tick due at %s could not be enqueued, and is "
                                "skipped (next: %s): %s",
                                schedule.name,
                                tick.isoformat(),
                                next_tick.isoformat(),
                                exc,
                                extra={"schedule": schedule.name, "job_type": schedule.job_type},
                            )
                    await conn.execute(
                        ADVANCE_SCHEDULE,
                        schedule.name,
                        tick,
                        next_tick,
                        tick if job_id is not None else None,
                        job_id,
                        timeout=self.statement_timeout,
                    )
            until_next = await conn.fetchval(
                NEXT_SCHEDULE_DUE, names, timeout=self.statement_timeout
            )
        return enqueued, 3600.0 if until_next is None else until_next

    async def list_schedules(self) -> list[dict[str, Any]]:
        """Every stored schedule: its definition, ``next_run_at``, ``last_run_at`` (the tick
        last enqueued), ``last_job_id`` and ``declared_at`` (when a worker last declared it:
        an old one is no longer declared by any running worker)."""
        async with self._acquire() as conn:
            rows = await conn.fetch(LIST_SCHEDULES, timeout=self.statement_timeout)
        schedules = []
        for row in rows:
            item = dict(row)
            item["payload"] = json.loads(item["payload"])
            schedules.append(item)
        return schedules

    async def remove_schedule(self, name: str) -> bool:
        """Delete a stored schedule (one no worker declares any more). False if none."""
        async with self._acquire() as conn:
            status = await conn.execute(REMOVE_SCHEDULE, name, timeout=self.statement_timeout)
        return bool(status == "DELETE 1")

    # -- inspect and manage ----------------------------------------------------------

    async def wait(
        self,
        job_id: int,
        timeout: float | timedelta | None = 30.0,  # noqa: ASYNC109 - the documented API
    ) -> Job:
        """Wait until the job is DONE, FAILED or CANCELLED, and return it.

        Woken by a notification when the job finishes (whoever finishes it), so many
        waiters cost no polling; ``timeout`` (seconds or a timedelta, None: no limit)
        raises WaitTimeout. JobNotFound if there is no such job. A job that fails and is
        retried later is not finished: the wait goes on.
        """
        if isinstance(job_id, bool) or not isinstance(job_id, int) or not 1 <= job_id < 2**63:
            raise ValueError(f"job_id must be a job's id (an int >= 1), got {job_id!r}")
        joined = self._joined()
        if joined is not None and joined.is_in_transaction():
            raise RuntimeError(
                f"store.wait({job_id}) inside store.transaction(): the job cannot finish "
                "while your transaction is open (it may not even be committed yet), and "
                "the wait would hold its row; call wait() after the block"
            )
        if isinstance(timeout, timedelta):
            timeout = timeout.total_seconds()
        if timeout is not None and (isinstance(timeout, bool) or timeout < 0):
            raise ValueError(f"timeout must be seconds >= 0, a timedelta or None, got {timeout!r}")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        closings = self._waiters.closings
        while True:
            if self._waiters.closings != closings:
                raise DatabaseUnavailable(
                    f"the store was closed while waiting for job {job_id}; it goes on "
                    "regardless: wait for it again on an open store, or look with get_job()"
                )
            woken = await self._waiters.watch(job_id)
            try:
                async with self._acquire(join=False) as conn:
                    await conn.execute(MARK_AWAITED, job_id, timeout=self.statement_timeout)
                    row = await conn.fetchrow(GET_JOB, job_id, timeout=self.statement_timeout)
                if row is None:
                    raise JobNotFound(
                        f"no job with id {job_id}: it was never enqueued here (check the "
                        "store's database and schema) or it was pruned"
                    )
                job = Job.from_record(row)
                if job.status.is_finished:
                    return job
                pause = WAIT_RECHECK_SECONDS
                if deadline is not None:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        raise WaitTimeout(
                            f"job {job_id} ({job.job_type}) is still {job.status.value} "
                            f"after {timeout:g} s (attempt {job.attempts} of "
                            f"{job.max_attempts}); wait longer, or check that a worker "
                            "handles this job type (pqrun status)"
                        )
                    pause = min(pause, remaining)
                # The notification wakes this at once; the pause only bounds how long a
                # notification lost with a dropped connection could hold it up.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(woken), pause)
            finally:
                self._waiters.forget(job_id, woken)

    async def get_job(self, job_id: int) -> Job | None:
        """The job with this id, or None."""
        async with self._acquire() as conn:
            row = await conn.fetchrow(GET_JOB, job_id, timeout=self.statement_timeout)
        return None if row is None else Job.from_record(row)

    async def list_jobs(
        self,
        status: JobStatus | str | None = None,
        job_type: str | None = None,
        limit: int = 100,
    ) -> list[Job]:
        """The newest jobs first, optionally of one status and/or job type."""
        _check_int("limit", limit, 1)
        async with self._acquire() as conn:
            rows = await conn.fetch(
                LIST_JOBS,
                _status_filter(status),
                job_type,
                limit,
                timeout=self.statement_timeout,
            )
        return [Job.from_record(row) for row in rows]

    async def retry_failed(
        self, job_type: str | None = None, limit: int | None = None
    ) -> tuple[list[int], list[int]]:
        """``retry()`` every FAILED job (of ``job_type``, or of any type), oldest first;
        at most ``limit`` of them if given.

        Returns (ids retried, ids left FAILED because an active job holds their
        dedupe_key).
        """
        if limit is not None:
            _check_int("limit", limit, 1)
        retried: list[int] = []
        conflicts: list[int] = []
        after = 0
        while limit is None or len(retried) < limit:
            async with self._acquire() as conn:
                rows = await conn.fetch(
                    FAILED_IDS, job_type, after, 1000, timeout=self.statement_timeout
                )
            if not rows:
                return retried, conflicts
            for row in rows:
                if limit is not None and len(retried) >= limit:
                    break
                try:
                    if await self.retry(row["id"]):
                        retried.append(row["id"])
                except JobConflict:
                    conflicts.append(row["id"])
            after = rows[-1]["id"]
        return retried, conflicts

    async def recent_failures(self, limit: int = 10) -> list[dict[str, Any]]:
        """The newest FAILED jobs: id, job_type, attempts, max_attempts, finished_at, error.

        ``error`` is the first line of ``last_error``.
        """
        _check_int("limit", limit, 1)
        async with self._acquire() as conn:
            rows = await conn.fetch(RECENT_FAILURES, limit, timeout=self.statement_timeout)
        return [dict(row) for row in rows]

    async def check_schema(self) -> list[str]:
        """What ddl.sql would add to the schema in use (empty: it is current).

        Raises SchemaMissing when there is no jobs table at all.
        """
        async with self._acquire() as conn:
            row = await conn.fetchrow(SCHEMA_OBJECTS, timeout=self.statement_timeout)
        if row is None:
            raise SchemaMissing(f"the table 'jobs' is not in {self._where()}; {self._setup_hint()}")
        return _missing_objects(row)

    async def _counts(
        self, conn: Connection, count_cap: int
    ) -> tuple[list[asyncpg.Record], dict[str, dict[str, Any]]]:
        """The active rows by type and status (at most ``count_cap`` per status), and for
        each status ``{"count", "exact"}``: exact under the cap, else the planner's
        estimate (``count`` None before the first ANALYZE) and ``at_least`` the cap."""
        active = await conn.fetch(STATUS_ACTIVE, count_cap, timeout=self.statement_timeout)
        totals = dict.fromkeys((JobStatus.READY.value, JobStatus.RUNNING.value), 0)
        for row in active:
            totals[row["status"]] += row["n"]
        for finished in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED):
            totals[finished.value] = await conn.fetchval(
                STATUS_FINISHED, finished.value, count_cap, timeout=self.statement_timeout
            )
        estimates: dict[str, int] | None = None
        counts: dict[str, dict[str, Any]] = {}
        for status, total in totals.items():
            if total < count_cap:
                counts[status] = {"count": total, "exact": True}
                continue
            if estimates is None:
                rows = await conn.fetch(STATUS_ESTIMATES, timeout=self.statement_timeout)
                estimates = {row["status"]: row["estimate"] for row in rows}
            estimate = estimates.get(status)
            counts[status] = {
                "count": max(estimate, count_cap) if estimate is not None else None,
                "exact": False,
                "at_least": count_cap,
            }
        return active, counts

    async def status_counts(self, count_cap: int = 20_000) -> dict[str, dict[str, Any]]:
        """Jobs per status, each ``{"count", "exact"}``: counted through the indexes up
        to ``count_cap``, beyond that the planner's estimate (``count`` None before the
        table was first analyzed; ``at_least`` is the cap)."""
        _check_int("count_cap", count_cap, 1)
        async with self._acquire() as conn:
            _active, counts = await self._counts(conn, count_cap)
        return counts

    async def queue_status(
        self, *, count_cap: int = STATUS_COUNT_CAP, rate_cap: int = STATUS_RATE_CAP
    ) -> dict[str, Any]:
        """A summary of the queue for ``pqrun status`` (JSON-ready), without a table scan.

        ``counts`` per status, ``by_type`` for READY/RUNNING jobs, ``oldest_due_seconds``
        (how long the longest-waiting due job has waited), ``throughput`` of DONE and
        FAILED jobs over the last minute and hour, and ``workers``. Each count says
        whether it is ``exact``: a status with more than ``count_cap`` jobs gets the
        planner's estimate (None before the table's first ANALYZE), and a rate over
        more than ``rate_cap`` jobs is extrapolated from the newest ``rate_cap``.
        """
        _check_int("count_cap", count_cap, 1)
        _check_int("rate_cap", rate_cap, 1)
        async with self._acquire() as conn:
            now = await conn.fetchval(DATABASE_NOW, timeout=self.statement_timeout)
            active, counts = await self._counts(conn, count_cap)
            windows = {"last_minute": timedelta(minutes=1), "last_hour": timedelta(hours=1)}
            throughput: dict[str, dict[str, Any]] = {}
            for status in (JobStatus.DONE, JobStatus.FAILED):
                for name, window in windows.items():
                    row = await conn.fetchrow(
                        STATUS_RECENT, status.value, window, rate_cap,
                        timeout=self.statement_timeout,
                    )  # fmt: skip
                    assert row is not None
                    throughput.setdefault(status.value, {})[name] = _rate(row, window, rate_cap)
            workers = await conn.fetch(LIST_WORKERS, timeout=self.statement_timeout)
        by_type: dict[str, dict[str, int]] = {}
        oldest_due: datetime | None = None
        for row in active:
            entry = by_type.setdefault(row["job_type"], {"ready": 0, "due": 0, "running": 0})
            if row["status"] == JobStatus.READY:
                entry["ready"] += row["n"]
                entry["due"] += row["due"]
                if row["oldest_due"] is not None and (
                    oldest_due is None or row["oldest_due"] < oldest_due
                ):
                    oldest_due = row["oldest_due"]
            else:
                entry["running"] += row["n"]
        return {
            "schema": self.schema or self.channel.removeprefix("pqrun:"),
            "now": now.isoformat(),
            "counts": counts,
            "by_type": [{"job_type": name, **by_type[name]} for name in sorted(by_type)],
            "oldest_due_seconds": (
                None if oldest_due is None else max(0.0, (now - oldest_due).total_seconds())
            ),
            "throughput": throughput,
            "workers": [
                {
                    **dict(w),
                    "started_at": w["started_at"].isoformat(),
                    "heartbeat_at": w["heartbeat_at"].isoformat(),
                    "heartbeat_age_seconds": (now - w["heartbeat_at"]).total_seconds(),
                }
                for w in workers
            ],
        }

    async def cancel(self, job_id: int) -> bool:
        """READY or RUNNING -> CANCELLED. False if the job was not active (or not found).

        A RUNNING job's worker is told, and cancels the handler (an ``async`` one: a plain
        function in a thread runs to its end). Whatever the run answers is ignored.
        """
        async with self._acquire() as conn:
            row = await conn.fetchval(CANCEL, job_id, self.channel, timeout=self.statement_timeout)
        return row is not None

    async def retry(self, job_id: int) -> bool:
        """FAILED or CANCELLED -> READY, due now, with its attempts counted from zero.

        False if the job is in another state (or not found). Raises JobConflict when an
        active job holds the same dedupe_key.
        """
        async with self._acquire() as conn:
            try:
                row = await conn.fetchval(
                    RETRY, job_id, self.channel, timeout=self.statement_timeout
                )
            except asyncpg.UniqueViolationError as exc:
                raise JobConflict(
                    f"job {job_id} cannot be retried while another job with the same "
                    f"dedupe_key is READY or RUNNING ({exc.detail}); cancel that job or "
                    "let it finish first"
                ) from exc
        return row is not None

    # -- observability: cheap, bounded reads for metrics and the dashboard -------------

    async def queue_stats(self, count_cap: int = STATUS_COUNT_CAP) -> list[dict[str, Any]]:
        """Active jobs per type, through the partial indexes, at most ``count_cap`` of
        each status.

        One dict per job type with READY or RUNNING jobs: ``job_type``, ``ready`` (all
        READY, due or not), ``due`` (READY and due now), ``running``, and
        ``oldest_due_seconds`` (how long the oldest due READY job has waited; None when
        none is due).
        """
        _check_int("count_cap", count_cap, 1)
        async with self._acquire() as conn:
            rows = await conn.fetch(STATUS_ACTIVE, count_cap, timeout=self.statement_timeout)
        stats: dict[str, dict[str, Any]] = {}
        for row in rows:
            entry = stats.setdefault(
                row["job_type"],
                {
                    "job_type": row["job_type"],
                    "ready": 0,
                    "due": 0,
                    "running": 0,
                    "oldest_due_seconds": None,
                },
            )
            if row["status"] == "READY":
                entry["ready"] = row["n"]
                entry["due"] = row["due"]
                entry["oldest_due_seconds"] = row["oldest_due_seconds"]
            else:
                entry["running"] = row["n"]
        return [stats[job_type] for job_type in sorted(stats)]

    async def workers_alive(self, within: timedelta = timedelta(seconds=30)) -> int:
        """How many registered workers sent a heartbeat in the last ``within``."""
        async with self._acquire() as conn:
            alive: int = await conn.fetchval(WORKERS_ALIVE, within, timeout=self.statement_timeout)
        return alive

    async def max_job_id(self) -> int:
        """The highest job id so far (0 for an empty table); one step of the primary key."""
        async with self._acquire() as conn:
            newest: int = await conn.fetchval(MAX_JOB_ID, timeout=self.statement_timeout)
        return newest

    async def browse_jobs(
        self,
        *,
        status: JobStatus | str | None = None,
        job_type: str | None = None,
        before: int | None = None,
        window: int = 50_000,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` jobs, newest first, among the ``window`` ids below ``before``.

        For browsing a big table: whatever the filters, this reads at most ``window``
        rows (through the primary key), so a rare status or type on millions of rows is
        no full scan. Fewer than ``limit`` rows means that window holds no more: look on
        from ``before - window``. ``before`` None: from the newest job. Rows are dicts of
        the columns a list shows (``last_error`` cut to 300 characters).
        """
        _check_int("window", window, 1)
        _check_int("limit", limit, 1)
        if before is None:
            before = await self.max_job_id() + 1
        async with self._acquire() as conn:
            rows = await conn.fetch(
                BROWSE_JOBS,
                before,
                window,
                _status_filter(status),
                job_type,
                limit,
                timeout=self.statement_timeout,
            )
        return [dict(row) for row in rows]


# How often an enqueue with a dedupe_key is tried when the job holding the key was
# committed after the statement's snapshot (once more is almost always enough).
DEDUPE_TRIES = 5


def _dedupe_unresolved(key: str | None) -> str:
    return (
        f"dedupe_key {key!r}: an active job holds it but cannot be seen from this "
        "transaction (REPEATABLE READ or SERIALIZABLE sees only its own snapshot); "
        "enqueue from a READ COMMITTED transaction"
    )


def _tell(hook: Callable[..., None], *args: Any) -> None:
    """Call an observer's hook; its failure is logged, never the caller's problem."""
    try:
        hook(*args)
    except Exception:
        logger.exception("pqrun: observer %r failed", hook)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _DedicatedConnection(asyncpg.Connection):
    """A connection from ``dedicated_connection()``: opened with the store's settings."""


@dataclass(slots=True, eq=False)
class _Block:
    """An open connection() or transaction() block."""

    conn: Connection
    open: bool = True
