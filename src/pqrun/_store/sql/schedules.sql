-- name: database_now
-- Guard: a read; moves nothing.
SELECT now()

-- name: declare_schedule
-- A worker declares its schedules: the definition is its, and the next tick is kept unless
-- the timing (cron, interval or timezone) changed, so a tick missed while no worker ran
-- is still due when one starts.
-- Guard: the schedule row of this name; its next tick is kept while the timing is
-- unchanged.
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

-- name: due_schedules
-- The due schedules among $1, locked for this transaction. SKIP LOCKED: a schedule that
-- another worker is firing right now is that worker's to fire.
-- Guard: due schedules among $1, locked FOR UPDATE SKIP LOCKED for this transaction.
SELECT name, next_run_at, now() AS now
FROM job_schedules
WHERE name = ANY($1::text[]) AND next_run_at <= now()
ORDER BY next_run_at
FOR UPDATE SKIP LOCKED

-- name: advance_schedule
-- Move a fired schedule to its next tick. It names the tick it fired: if that is no
-- longer the row's next tick, someone else fired it, and nothing changes.
-- Guard: only while the row's next tick is still the tick fired ($2).
UPDATE job_schedules
SET next_run_at = $3, last_run_at = COALESCE($4, last_run_at),
    last_job_id = COALESCE($5, last_job_id)
WHERE name = $1 AND next_run_at = $2

-- name: next_schedule_due
-- Seconds until the earliest of these schedules is due (negative: due already).
-- Guard: a read; moves nothing.
SELECT extract(epoch FROM min(next_run_at) - now())::float8
FROM job_schedules
WHERE name = ANY($1::text[])

-- name: list_schedules
-- Guard: a read; moves nothing.
SELECT name, job_type, cron, every_seconds, timezone, payload::text AS payload, priority,
       max_attempts, timeout_seconds, missed, next_run_at, last_run_at, last_job_id,
       declared_at
FROM job_schedules
ORDER BY name

-- name: remove_schedule
-- Guard: the schedule row of this name only.
DELETE FROM job_schedules WHERE name = $1
