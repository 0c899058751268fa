-- name: get_job
-- Guard: a read; moves nothing.
SELECT id, job_type, payload::text AS payload, status, priority, attempts, max_attempts,
       run_after, timeout_seconds, locked_at, locked_by, lease_id, heartbeat_at, dedupe_key,
       last_error, finished_at, duration_ms, result::text AS result, created_at, updated_at,
       concurrency_key, trace_context
FROM jobs
WHERE id = $1

-- name: error_history
-- The errors of a job's last attempts (a JSON array, see ddl.sql), or NULL.
-- Guard: a read; moves nothing.
SELECT error_history::text AS error_history FROM jobs WHERE id = $1

-- name: list_jobs
-- Guard: a read; moves nothing.
SELECT id, job_type, payload::text AS payload, status, priority, attempts, max_attempts,
       run_after, timeout_seconds, locked_at, locked_by, lease_id, heartbeat_at, dedupe_key,
       last_error, finished_at, duration_ms, result::text AS result, created_at, updated_at,
       concurrency_key, trace_context
FROM jobs
WHERE ($1::text IS NULL OR status = $1::text)
  AND ($2::text IS NULL OR job_type = $2::text)
ORDER BY id DESC
LIMIT $3

-- name: waiting_by_type
-- Of the RUNNING jobs of each type, how many a live worker held at its last heartbeat
-- without running their handler: claimed into its buffer, waiting for a free slot (or,
-- briefly, for their outcome's write). Live: a heartbeat within the worker's own stale
-- period (else $1).
-- Guard: a read of the registry, and of the held job rows by primary key (no more than
-- the live workers' slots and prefetch); moves nothing.
SELECT j.job_type, count(*) AS waiting
FROM job_workers AS w
CROSS JOIN LATERAL unnest(w.held_jobs) AS held(id)
JOIN jobs AS j ON j.id = held.id
WHERE w.heartbeat_at >= now() - COALESCE(w.stale_after, $1::interval)
  AND NOT (held.id = ANY(w.started_jobs))
  AND j.status = 'RUNNING' AND j.locked_by = w.worker_id
GROUP BY j.job_type

-- name: run_state
-- Whether the handler of a RUNNING job ($1) held by worker $2 had started at that
-- worker's last heartbeat (false: claimed, waiting in its buffer), and whether that
-- heartbeat is within the worker's stale period (else $3); no row for no such worker.
-- Guard: a read of one registry row; moves nothing.
SELECT $1::bigint = ANY(started_jobs) AS started, $1::bigint = ANY(held_jobs) AS held,
       heartbeat_at >= now() - COALESCE(stale_after, $3::interval) AS live
FROM job_workers
WHERE worker_id = $2

-- name: status_active
-- READY and RUNNING jobs by type, through the pickup and running indexes, at most $1 of
-- each status.
-- Guard: a read through the partial indexes, at most $1 rows per status; moves nothing.
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

-- name: status_finished
-- How many jobs have finished status $1, counting at most $2 (the jobs_finished index).
-- Guard: a read of at most $2 rows; moves nothing.
SELECT count(*) FROM (
    SELECT 1 FROM jobs WHERE status = $1 AND finished_at IS NOT NULL LIMIT $2
) AS finished

-- name: status_waiting
-- How many jobs are WAITING for their dependencies, counting at most $1 (the jobs_waiting
-- index).
-- Guard: a read of at most $1 index entries; moves nothing.
SELECT count(*) FROM (SELECT 1 FROM jobs WHERE status = 'WAITING' LIMIT $1) AS waiting

-- name: dependencies
-- The jobs job $1 depends on, and those that depend on it (at most $2 of those, the
-- newest), each with its id, type and status: for a job's page. Through the primary key
-- and the jobs_dependents index.
-- Guard: a read; moves nothing.
(SELECT 'dependencies' AS relation, p.id, p.job_type, p.status
 FROM jobs AS c JOIN jobs AS p ON p.id = ANY(c.depends_on)
 WHERE c.id = $1)
UNION ALL
(SELECT 'dependents', d.id, d.job_type, d.status
 FROM jobs AS d
 WHERE d.depends_on @> ARRAY[$1::bigint] AND d.depends_on IS NOT NULL
 ORDER BY d.id DESC LIMIT $2)

-- name: dependency_jobs
-- The jobs job $1 depends on, whole (a handler's ctx.dependencies()): one statement.
-- Guard: a read; moves nothing.
SELECT p.id, p.job_type, p.payload::text AS payload, p.status, p.priority, p.attempts,
       p.max_attempts, p.run_after, p.timeout_seconds, p.locked_at, p.locked_by, p.lease_id,
       p.heartbeat_at, p.dedupe_key, p.last_error, p.finished_at, p.duration_ms,
       p.result::text AS result, p.created_at, p.updated_at, p.concurrency_key,
       p.trace_context
FROM jobs AS c JOIN jobs AS p ON p.id = ANY(c.depends_on)
WHERE c.id = $1
ORDER BY p.id

-- name: status_estimates
-- Rows per status as the planner estimates them: the table's row estimate times the
-- share of each status in its statistics (kept by ANALYZE and autovacuum). No rows
-- before the table was first analyzed.
-- Guard: a read of the planner statistics; moves nothing.
SELECT v.status, round(c.reltuples * v.share)::bigint AS estimate
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
JOIN pg_stats AS s
  ON s.schemaname = n.nspname AND s.tablename = c.relname AND s.attname = 'status'
CROSS JOIN LATERAL unnest(s.most_common_vals::text::text[], s.most_common_freqs)
     AS v(status, share)
WHERE c.oid = to_regclass('jobs') AND c.reltuples >= 0

-- name: status_recent
-- Jobs that reached status $1 within the last $2: the count of at most $3 of the newest,
-- and the finish time of the oldest of those (to extrapolate a rate when capped).
-- Guard: a read of at most $3 rows; moves nothing.
SELECT count(*) AS n, min(finished_at) AS oldest, now() AS now
FROM (
    SELECT finished_at FROM jobs
    WHERE status = $1 AND finished_at IS NOT NULL AND finished_at > now() - $2::interval
    ORDER BY status, finished_at DESC
    LIMIT $3
) AS recent

-- name: failed_by_type
-- Jobs that FAILED within the last $1, by type, counting at most $2 of the newest
-- (through the jobs_finished index): the Queues table shows types whose jobs all failed.
-- Guard: a read of at most $2 rows; moves nothing.
SELECT job_type, count(*) AS n
FROM (
    SELECT job_type FROM jobs
    WHERE status = 'FAILED' AND finished_at IS NOT NULL AND finished_at > now() - $1::interval
    ORDER BY status, finished_at DESC
    LIMIT $2
) AS failed
GROUP BY job_type

-- name: recent_failures
-- The newest failures, through the jobs_finished index.
-- Guard: a read; moves nothing.
SELECT id, job_type, attempts, max_attempts, finished_at,
       split_part(last_error, E'
', 1) AS error
FROM jobs
WHERE status = 'FAILED' AND finished_at IS NOT NULL
ORDER BY status, finished_at DESC
LIMIT $1

-- name: workers_alive
-- Workers whose heartbeat is younger than $1.
-- Guard: a read of the registry; moves nothing.
SELECT count(*) FROM job_workers WHERE heartbeat_at >= now() - $1::interval

-- name: max_job_id
-- The newest id (the primary key's last entry): where a browse starts, and with the
-- count of active jobs, how the dashboard measures the rates of enqueue and completion.
-- Guard: a read; moves nothing.
SELECT coalesce(max(id), 0) FROM jobs

-- name: browse_jobs
-- One page of jobs, newest first, among the ids in [$1 - $2, $1): a walk of at most $2
-- entries of the primary key however rare the filters are on a big table. The caller
-- moves the window to look further back.
-- Guard: a read of at most $2 ids; moves nothing.
SELECT id, job_type, status, priority, attempts, max_attempts, run_after, locked_by,
       dedupe_key, created_at, updated_at, finished_at, duration_ms,
       left(last_error, 300) AS last_error
FROM jobs
WHERE id < $1 AND id >= $1 - $2
  AND ($3::text IS NULL OR status = $3::text)
  AND ($4::text IS NULL OR job_type = $4::text)
ORDER BY id DESC
LIMIT $5
