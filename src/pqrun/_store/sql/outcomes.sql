-- name: mark_done
-- RUNNING (this claim) -> DONE. $4 NULL: the caller knows the owner and attempt only.
-- Guard: RUNNING and owned by this claim: locked_by $2, attempts $3, lease_id $4 (when
-- given).
UPDATE jobs
SET status = 'DONE',
    result = $5::text::jsonb,
    last_error = NULL,  -- an earlier attempt's error stays in error_history
    duration_ms = $6,
    finished_at = now(),
    updated_at = now()
-- The RUNNING guard in a form the partial index jobs_running does not match (the same
-- test: "C" is deterministic). Matched, the planner reaches the rows through that
-- index whenever the statistics show few RUNNING jobs (as after a vacuum or analyze
-- while the queue was quiet), and steps over the dead entry of every claim made since
-- the last vacuum: 150-260 ms per batch of 500 under autovacuum, not 5.
WHERE id = $1 AND status = 'RUNNING' COLLATE "C" AND locked_by = $2 AND attempts = $3
  AND ($4::bigint IS NULL OR lease_id = $4)

-- name: mark_done_batch
-- RUNNING -> DONE for many jobs in one statement, each row guarded by its own claim.
-- Returns the ids that moved; the others were no longer owned by that claim.
-- Guard: per row: RUNNING and owned by that row's claim (locked_by, attempts, lease_id).
UPDATE jobs AS j
SET status = 'DONE',
    result = d.result::jsonb,
    last_error = NULL,  -- an earlier attempt's error stays in error_history
    duration_ms = d.duration_ms,
    finished_at = now(),
    updated_at = now()
FROM unnest($1::bigint[], $2::text[], $3::integer[], $4::bigint[], $5::text[],
            $6::integer[])
     AS d(id, locked_by, attempts, lease_id, result, duration_ms)
WHERE j.id = ANY($1::bigint[])  -- lets the planner reach the rows through the primary key
  AND j.id = d.id
  -- Every guard is a test of the joined pair (the CASE is 'RUNNING': d.id is never NULL
  -- on a joined row), none of jobs alone. A test of jobs alone makes the planner count
  -- the rows it finds by the statistics, which after a quiet spell show almost no
  -- RUNNING job: it took the 500 rows for one, joined them by a nested loop that read all
  -- of d for each (160 ms, not 8), or found them through jobs_running, stepping over the
  -- dead entry of every claim since the last vacuum (150-260 ms a batch under
  -- autovacuum).
  AND j.status = CASE WHEN d.id IS NOT NULL THEN 'RUNNING' END
  AND j.locked_by = d.locked_by AND j.attempts = d.attempts AND j.lease_id = d.lease_id
RETURNING j.id, j.lease_id

-- name: delete_done_batch
-- RUNNING -> deleted: the completion of a worker with delete_done=True
-- (docs/operations.md#retention), in place of mark_done_batch: the row is deleted instead
-- of written DONE, which leaves one dead row version and adds no index entry. Only a job
-- nobody reads after it ends: not one a store.wait() waits for (awaited), not one other
-- jobs depend on (has_dependents, which their insert sets under the row's lock). The
-- rows it passes over go through mark_done_batch after it. SKIP LOCKED: a row another
-- session holds (a dependent's insert, a foreign key's KEY SHARE lock) is passed over
-- at once, not waited for; READ COMMITTED re-reads a row changed since the statement
-- began before it locks it, so a waiter or dependent that marked it keeps it.
-- Guard: per row: RUNNING and owned by that row's claim (locked_by, attempts, lease_id),
-- not awaited, no dependents, locked FOR UPDATE SKIP LOCKED; the DELETE takes only the
-- row versions so locked (by ctid, which nobody can change while the lock holds; one the
-- statement's snapshot does not show is passed over, and written DONE after).
WITH mine AS (
    SELECT j.ctid AS row_at
    FROM jobs AS j
    JOIN unnest($1::bigint[], $2::text[], $3::integer[], $4::bigint[])
         AS d(id, locked_by, attempts, lease_id) ON j.id = d.id
    WHERE j.id = ANY($1::bigint[])  -- lets the planner reach the rows through the primary key
      -- Tests of the joined pair only, as in mark_done_batch (each CASE is its constant),
      -- so the planner never counts the rows by the statistics of status, awaited or
      -- has_dependents: after a quiet spell those show mostly kept rows (awaited, with
      -- dependents), and as a test of jobs alone the planner took the 500 rows for one
      -- and joined them by a nested loop reading every claim for each (61-75 ms, not 2).
      AND j.status = CASE WHEN d.id IS NOT NULL THEN 'RUNNING' END
      AND j.locked_by = d.locked_by AND j.attempts = d.attempts AND j.lease_id = d.lease_id
      AND j.awaited = CASE WHEN d.id IS NOT NULL THEN false END
      AND j.has_dependents = CASE WHEN d.id IS NOT NULL THEN false END
    ORDER BY j.id  -- the one lock order of a worker's multi-row statements
    FOR UPDATE OF j SKIP LOCKED
)
-- The row versions locked, by ctid: no index lookup again.
DELETE FROM jobs AS j
WHERE j.ctid = ANY(ARRAY(SELECT row_at FROM mine))
RETURNING j.id, j.lease_id

-- name: mark_error
-- RUNNING (this claim) -> READY after a delay, or FAILED when the handler said so ($6)
-- or this was the last allowed attempt. A job back in READY has no owner.
-- Guard: RUNNING and owned by this claim: locked_by $2, attempts $3, lease_id $4 (when
-- given).
UPDATE jobs
SET status = CASE WHEN $6 OR attempts >= max_attempts THEN 'FAILED' ELSE 'READY' END,
    run_after = CASE WHEN $6 OR attempts >= max_attempts THEN run_after
                     ELSE now() + $7::interval END,
    finished_at = CASE WHEN $6 OR attempts >= max_attempts THEN now() END,
    locked_at = CASE WHEN $6 OR attempts >= max_attempts THEN locked_at END,
    locked_by = CASE WHEN $6 OR attempts >= max_attempts THEN locked_by END,
    last_error = $5,
    -- This attempt's error after the last 19 of earlier ones (see ddl.sql); a value that
    -- is no array (written by hand) is dropped: nothing may keep an outcome unwritten.
    error_history = jsonb_path_query_array(
                        CASE WHEN jsonb_typeof(error_history) = 'array' THEN error_history
                             ELSE '[]' END,
                        '$[last-18 to last]')
                    || jsonb_build_array(jsonb_build_object(
                           'attempt', attempts, 'at', now(), 'worker', $2::text,
                           'outcome', CASE WHEN $6 OR attempts >= max_attempts
                                           THEN 'failed' ELSE 'retried' END,
                           'error', left($5, 2000))),
    duration_ms = $8,
    updated_at = now()
WHERE id = $1 AND status = 'RUNNING' COLLATE "C"  -- not jobs_running: see mark_done
  AND locked_by = $2 AND attempts = $3
  AND ($4::bigint IS NULL OR lease_id = $4)
RETURNING status

-- name: snooze
-- RUNNING (this claim) -> READY after a delay, giving the attempt back: the handler said
-- "not now" (Snooze), which is no failure.
-- Guard: RUNNING and owned by this claim: locked_by $2, attempts $3, lease_id $4 (when
-- given).
UPDATE jobs
SET status = 'READY',
    attempts = attempts - 1,
    run_after = now() + $5::interval,
    locked_at = NULL,
    locked_by = NULL,
    duration_ms = $6,
    updated_at = now()
WHERE id = $1 AND status = 'RUNNING' COLLATE "C"  -- not jobs_running: see mark_done
  AND locked_by = $2 AND attempts = $3
  AND ($4::bigint IS NULL OR lease_id = $4)

-- name: release
-- RUNNING (these claims) -> READY, at once, for a worker that is shutting down (or whose
-- slots stay busy: its buffer goes to idle workers). The interrupted or unstarted run is
-- not counted against max_attempts. Other workers are woken. $5: why (NULL: last_error
-- is kept).
-- Guard: per row: RUNNING and owned by that row's claim (locked_by, attempts, lease_id).
WITH released AS (
    UPDATE jobs AS j
    SET status = 'READY',
        attempts = j.attempts - 1,
        run_after = now(),
        locked_at = NULL,
        locked_by = NULL,
        last_error = COALESCE($5, j.last_error),  -- NULL: nothing went wrong, keep it
        updated_at = now()
    FROM unnest($1::bigint[], $2::text[], $3::integer[], $4::bigint[])
         AS mine(id, locked_by, attempts, lease_id)
    WHERE j.id = ANY($1::bigint[])
      AND j.id = mine.id
      -- Tests of the joined pair only, as in mark_done_batch.
      AND j.status = CASE WHEN mine.id IS NOT NULL THEN 'RUNNING' END
      AND j.locked_by = mine.locked_by
      AND j.attempts = mine.attempts AND j.lease_id = mine.lease_id
    RETURNING j.id
),
woken AS (SELECT pg_notify($6, '') WHERE EXISTS (SELECT 1 FROM released))
SELECT released.id FROM released LEFT JOIN woken ON true
