-- name: mark_awaited
-- Flag a job whose finish someone waits for (store.wait()): from then on, the trigger
-- jobs_notify_finished announces its move to DONE, FAILED or CANCELLED on the channel.
-- Guard: WAITING, READY or RUNNING and not awaited yet; moves no job between states.
-- While this holds the row, a worker's claim (FOR UPDATE SKIP LOCKED) passes the job
-- over: called right after the enqueue, as wait() usually is, it meets the claim of the
-- worker the enqueue woke. So a READY job that is due is announced again ($2: the
-- channel), and that worker looks once more instead of sleeping until its next poll.
WITH marked AS (
    UPDATE jobs SET awaited = true
    WHERE id = $1 AND status IN ('WAITING', 'READY', 'RUNNING') AND NOT awaited
    RETURNING status, run_after
)
SELECT count(pg_notify($2, '')) FROM marked WHERE status = 'READY' AND run_after <= now()

-- name: cancel
-- WAITING, READY or RUNNING -> CANCELLED. The worker running a RUNNING job is told on the
-- channel ('cancel:<id>') and cancels its handler; whatever that run answers finds the
-- job CANCELLED and changes nothing.
-- Guard: WAITING, READY or RUNNING, locked FOR UPDATE, and still so in the UPDATE.
WITH target AS (
    SELECT id, status AS was FROM jobs
    WHERE id = $1 AND status IN ('WAITING', 'READY', 'RUNNING')
    FOR UPDATE
),
cancelled AS (
    UPDATE jobs AS j
    SET status = 'CANCELLED', finished_at = now(), updated_at = now()
    FROM target
    WHERE j.id = target.id AND j.status IN ('WAITING', 'READY', 'RUNNING')
    RETURNING j.id, target.was
),
told AS (SELECT pg_notify($2, 'cancel:' || id) FROM cancelled WHERE was = 'RUNNING')
SELECT cancelled.id FROM cancelled LEFT JOIN told ON true

-- name: retry
-- FAILED or CANCELLED -> READY with a fresh count of attempts. Only an explicit call
-- does this: nothing in pqrun calls it by itself. Idle workers are woken.
-- Guard: FAILED or CANCELLED only; jobs_dedupe_active refuses the move while another
-- active job holds the key.
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

-- name: failed_ids
-- FAILED jobs (of type $1, or any) with an id above $2, oldest first: `pqrun jobs retry
-- --failed` walks them in pages.
-- Guard: a read; retry checks each job again.
SELECT id FROM jobs
WHERE status = 'FAILED' AND ($1::text IS NULL OR job_type = $1) AND id > $2
ORDER BY id
LIMIT $3

-- name: active_ids
-- WAITING, READY or RUNNING jobs of type $1 with an id above $2, oldest first: `pqrun jobs cancel
-- --type` walks them in pages.
-- Guard: a read; cancel checks each job again.
SELECT id FROM jobs
WHERE status IN ('WAITING', 'READY', 'RUNNING') AND job_type = $1 AND id > $2
ORDER BY id
LIMIT $3

-- name: retry_many
-- FAILED or CANCELLED -> READY with a fresh count of attempts, for each of the ids $1
-- (the dashboard's bulk retry): one statement, as retry does for one job. A job whose
-- dedupe_key an active job holds, or an older job of $1 retried with it, stays where it
-- is (the unique index would refuse the whole statement). Idle workers are woken.
-- Guard: FAILED or CANCELLED, in the UPDATE's WHERE: a job someone else moved between
-- the confirmation and this statement is not moved again.
WITH picked AS (
    SELECT f.id FROM jobs AS f
    WHERE f.id = ANY($1::bigint[]) AND f.status IN ('FAILED', 'CANCELLED')
      AND (f.dedupe_key IS NULL OR (
          NOT EXISTS (
              SELECT 1 FROM jobs AS active
              WHERE active.dedupe_key = f.dedupe_key
                AND active.status IN ('READY', 'RUNNING'))
          AND NOT EXISTS (
              SELECT 1 FROM jobs AS older
              WHERE older.id = ANY($1::bigint[]) AND older.id < f.id
                AND older.dedupe_key = f.dedupe_key
                AND older.status IN ('FAILED', 'CANCELLED'))))
),
moved AS (
    UPDATE jobs AS j
    SET status = 'READY',
        attempts = 0,
        run_after = now(),
        locked_at = NULL,
        locked_by = NULL,
        finished_at = NULL,
        duration_ms = NULL,
        result = NULL,
        updated_at = now()
    FROM picked
    WHERE j.id = ANY($1::bigint[]) AND j.id = picked.id
      AND j.status IN ('FAILED', 'CANCELLED')
    RETURNING j.id
),
woken AS (SELECT pg_notify($2, '') WHERE EXISTS (SELECT 1 FROM moved))
SELECT moved.id FROM moved LEFT JOIN woken ON true

-- name: cancel_many
-- WAITING, READY or RUNNING -> CANCELLED for each of the ids $1 (the dashboard's bulk cancel),
-- as cancel does for one job: the worker of each RUNNING one is told ('cancel:<id>').
-- Rows are locked in id order, so two bulk cancels never deadlock.
-- Guard: WAITING, READY or RUNNING, locked FOR UPDATE, and still so in the UPDATE.
WITH target AS (
    SELECT id, status AS was FROM jobs
    WHERE id = ANY($1::bigint[]) AND status IN ('WAITING', 'READY', 'RUNNING')
    ORDER BY id
    FOR UPDATE
),
cancelled AS (
    UPDATE jobs AS j
    SET status = 'CANCELLED', finished_at = now(), updated_at = now()
    FROM target
    WHERE j.id = ANY($1::bigint[]) AND j.id = target.id
      AND j.status IN ('WAITING', 'READY', 'RUNNING')
    RETURNING j.id, target.was
),
told AS (SELECT pg_notify($2, 'cancel:' || id) FROM cancelled WHERE was = 'RUNNING')
SELECT id FROM cancelled WHERE (SELECT count(*) FROM told) >= 0

-- name: run_now
-- READY and due later -> due now (run_after = now()), for each of the ids $1: "run now"
-- on the dashboard. The job stays READY; its attempts and priority are kept. Idle
-- workers are woken.
-- Guard: READY and not due yet: a job claimed, cancelled or already due meanwhile is
-- not touched.
WITH moved AS (
    UPDATE jobs
    SET run_after = now(), updated_at = now()
    -- Not through the whole of jobs_ready_pickup, as in claims.sql's pickup.
    WHERE id = ANY($1::bigint[]) AND status = 'READY' COLLATE "C" AND run_after > now()
    RETURNING id
),
woken AS (SELECT pg_notify($2, '') WHERE EXISTS (SELECT 1 FROM moved))
SELECT moved.id FROM moved LEFT JOIN woken ON true
