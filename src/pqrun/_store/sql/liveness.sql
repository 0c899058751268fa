-- name: heartbeat
-- A worker's heartbeat, run on the worker's own connection: its row in the registry,
-- with the claims it holds ($6 job ids, $7 their lease_ids), and which of those claims
-- still own their job. It writes no job row and reads job rows without locking them, so
-- nothing another session or a handler holds can make it wait (a plain SELECT never
-- waits for row locks). A claim missing from the answer was cancelled or taken back.
-- The row is this worker's only if it carries its instance token $8, or its last
-- heartbeat is older than $9 (that worker is gone): a second live worker with the same
-- worker_id would erase the first one's claims, so it is told (registered = false).
-- alive_since is kept while heartbeats come less than $10 apart, else starts again.
-- $11: how many jobs a notification may count on the worker for (0: it does not listen).
-- $12: the held jobs whose handler has started (for operators: running, not waiting).
-- Guard: the registry row is written only when it carries instance $8 or its heartbeat is
-- stale ($9); job rows are only read, without locks.
WITH registered AS (
    INSERT INTO job_workers AS w (worker_id, host, pid, job_types, concurrency, held_jobs,
                                  held_leases, instance, stale_after, wake_capacity,
                                  started_jobs)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $11, $12)
    ON CONFLICT (worker_id) DO UPDATE
    SET heartbeat_at = now(), host = EXCLUDED.host, pid = EXCLUDED.pid,
        job_types = EXCLUDED.job_types, concurrency = EXCLUDED.concurrency,
        held_jobs = EXCLUDED.held_jobs, held_leases = EXCLUDED.held_leases,
        instance = EXCLUDED.instance, stale_after = EXCLUDED.stale_after,
        wake_capacity = EXCLUDED.wake_capacity, started_jobs = EXCLUDED.started_jobs,
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
      -- Tests of the joined pair only, as in outcomes.sql's mark_done_batch.
      AND j.status = CASE WHEN mine.id IS NOT NULL THEN 'RUNNING' END
      AND j.locked_by = CASE WHEN mine.id IS NOT NULL THEN $1 END
      AND j.lease_id = mine.lease_id
)
SELECT EXISTS (SELECT 1 FROM registered) AS registered, owned.id, owned.lease_id
FROM (SELECT 1) AS one LEFT JOIN owned ON true

-- name: worker_row
-- Guard: a read of the registry; moves nothing.
SELECT host, pid, started_at FROM job_workers WHERE worker_id = $1

-- name: still_owned
-- Which of these claims ($2 job ids, $3 lease_ids) of worker $1 still own their job: a
-- read, without locks, for a worker told (by a notification anyone may send) that one
-- of its jobs was cancelled. The row decides, not the notification.
-- Guard: a read without locks: RUNNING, locked_by $1 and the lease_id of each claim.
SELECT j.id, j.lease_id
FROM jobs AS j
JOIN unnest($2::bigint[], $3::bigint[]) AS mine(id, lease_id) ON j.id = mine.id
WHERE j.id = ANY($2::bigint[])
  -- Tests of the joined pair only, as in outcomes.sql's mark_done_batch.
  AND j.status = CASE WHEN mine.id IS NOT NULL THEN 'RUNNING' END
  AND j.locked_by = CASE WHEN mine.id IS NOT NULL THEN $1 END
  AND j.lease_id = mine.lease_id

-- name: forget_dead_workers
-- Workers whose heartbeat is older than $1 (and than their own stale period) are gone,
-- or cut off: off the registry.
-- Guard: only registry rows whose heartbeat is older than $1 and than their own stale
-- period.
DELETE FROM job_workers
WHERE heartbeat_at < now() - greatest($1::interval, COALESCE(stale_after, $1::interval))
RETURNING worker_id

-- name: leave
-- Only this instance's row: a worker leaving must not take a namesake off the registry.
-- The other workers hear 'left:<worker_id>' on channel $3 and stop counting on it to
-- claim jobs whose notification names it (a hint: at worst one more worker claims).
-- Guard: only the row of this worker_id carrying this instance token.
WITH gone AS (
    DELETE FROM job_workers WHERE worker_id = $1 AND instance IS NOT DISTINCT FROM $2
    RETURNING worker_id
)
SELECT pg_notify($3, 'left:' || worker_id) FROM gone

-- name: wake_roster
-- The workers a notification of inserted jobs may name (worker, job types, how many
-- jobs one claim of it takes): those that said they listen, and whose last heartbeat
-- is within two of their intervals, $2 of their stale period ($1 for a worker that did
-- not record its own). Read by each worker's listener every few seconds.
-- Guard: a read of the registry; moves nothing.
SELECT worker_id, job_types, wake_capacity
FROM job_workers
WHERE wake_capacity > 0
  AND heartbeat_at >= now() - COALESCE(stale_after, $1::interval) * $2::float8

-- name: list_workers
-- busy: the slots running a handler at the worker's last heartbeat.
-- Guard: a read of the registry; moves nothing.
SELECT worker_id, host, pid, job_types, concurrency, started_at, heartbeat_at,
       cardinality(started_jobs) AS busy
FROM job_workers
ORDER BY started_at
