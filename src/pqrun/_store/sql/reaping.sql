-- name: reaper_lock
-- One reaper at a time per queue: the transaction-scoped advisory lock named after the
-- queue's channel. Returns false at once when another reaper holds it.
-- Guard: none on rows: the advisory lock lets one reaper act at a time per queue.
SELECT pg_try_advisory_xact_lock(hashtext($1))

-- name: reap_stale
-- RUNNING with no sign of life for $1 -> READY, or FAILED when that was its last allowed
-- attempt. A run's sign of life is its worker's heartbeat in job_workers (younger than $1)
-- listing the run's claim (job id and lease_id); a claim younger than $1 is left alone
-- too, since its worker lists it only from its next heartbeat on. So a job is taken back
-- only when its worker is gone (or silent for $1), or alive but no longer holding it (a
-- claim whose answer was lost with the connection); a RUNNING row with no owner, written
-- by hand, goes back as well. The reaper reads job_workers and never waits for a worker:
-- heartbeats do not touch job rows. The CTE locks each stale row together with the claim
-- it saw, and the UPDATE repeats that claim, so a job completed or re-picked meanwhile is
-- left alone. SKIP LOCKED: a row that someone holds locked right now is not waited for;
-- if still stale, the next pass takes it.
-- Guard: RUNNING and stale, locked with the claim it saw (FOR UPDATE SKIP LOCKED); the
-- UPDATE repeats that claim (locked_by, attempts, lease_id).
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
    SELECT j.id, j.locked_by, j.attempts, j.lease_id, j.attempts >= j.max_attempts AS last,
           format(
               '%s: attempt %s of %s (worker %s, claimed %s) gave no sign of life '
               '(last worker heartbeat: %s)%s',
               CASE WHEN j.attempts >= j.max_attempts THEN 'abandoned' ELSE 'reaped' END,
               j.attempts, j.max_attempts, COALESCE(j.locked_by, 'none'), j.locked_at,
               COALESCE(owner.heartbeat_at::text, 'none'),
               CASE WHEN j.attempts >= j.max_attempts THEN ', and no attempts are left'
                    ELSE '; put back to READY' END) AS message
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
    last_error = stale.message,
    -- This attempt's end after the last 19 of earlier ones (see ddl.sql); a value that
    -- is no array (written by hand) is dropped: nothing may keep a job from the reaper.
    error_history = jsonb_path_query_array(
                        CASE WHEN jsonb_typeof(j.error_history) = 'array' THEN j.error_history
                             ELSE '[]' END,
                        '$[last-18 to last]')
                    || jsonb_build_array(jsonb_build_object(
                           'attempt', j.attempts, 'at', now(), 'worker', j.locked_by,
                           'outcome', CASE WHEN stale.last THEN 'abandoned' ELSE 'reaped' END,
                           'error', stale.message)),
    updated_at = now()
FROM stale
WHERE j.id = stale.id
  -- COLLATE "C": by the primary key, not through jobs_running (its dead entries), as in
  -- outcomes.sql's mark_done (stale found its rows through that index already).
  AND j.status = 'RUNNING' COLLATE "C" AND j.locked_by IS NOT DISTINCT FROM stale.locked_by
  AND j.attempts = stale.attempts AND j.lease_id IS NOT DISTINCT FROM stale.lease_id
RETURNING j.id, j.status, stale.locked_by, j.attempts, j.job_type

-- name: reap_candidates
-- The RUNNING jobs reap_stale may take back ($1: the stale period), for reaping one by one
-- when one row refuses the move; reap_stale checks each again.
-- (The jobs of live workers, which their heartbeats list, are left out as in reap_stale;
-- at most 1,000 a pass, the next pass takes the rest.)
-- Guard: a read without locks; reap_stale checks each candidate again.
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
