-- Retention for the jobs table in plain SQL. Workers prune by themselves (DONE after 1 day,
-- FAILED/CANCELLED after 7; docs/operations.md#retention) and `pqrun prune` does it by
-- hand; these are for running it from pg_cron with WORKER_PRUNE_ENABLED=false, or for
-- archiving first. Applied by tests/test_examples.py.

-- 1. The simple way: finished jobs older than 7 days. Fine for small tables.
DELETE FROM jobs
WHERE status IN ('DONE', 'FAILED', 'CANCELLED')
  AND finished_at < now() - interval '7 days';

-- 2. Keep successes briefly and failures longer, for inspection and retry.
DELETE FROM jobs
WHERE (status = 'DONE' AND finished_at < now() - interval '1 day')
   OR (status IN ('FAILED', 'CANCELLED') AND finished_at < now() - interval '30 days');

-- 3. Big tables: delete in batches of 5,000 so no statement holds many locks or bloats
--    the WAL at once. Run it repeatedly until it reports DELETE 0.
DELETE FROM jobs
WHERE id IN (
    SELECT id FROM jobs
    WHERE status IN ('DONE', 'FAILED', 'CANCELLED')
      AND finished_at < now() - interval '7 days'
    ORDER BY id
    LIMIT 5000
);

-- 4. Archive before deleting: move old failures to a table of their own.
CREATE TABLE IF NOT EXISTS jobs_archive (LIKE jobs INCLUDING DEFAULTS);

WITH moved AS (
    DELETE FROM jobs
    WHERE status = 'FAILED' AND finished_at < now() - interval '30 days'
    RETURNING *
)
INSERT INTO jobs_archive SELECT * FROM moved;
