-- name: first_id_created_since
-- The lowest id of a job created at or after $1 (or, $1 NULL, at or after now() - $2),
-- or the newest id + 1 when there is none: where a time range starts and ends in the
-- primary key. Ids grow with created_at, so this is a binary search over the primary
-- key: about log2(ids) probes of one index entry each, whatever the table's size. A job
-- whose transaction was open across the moment (its id drawn before a newer job's) may
-- fall on either side of it.
-- Guard: a read of at most 130 index entries; moves nothing.
WITH RECURSIVE search(lo, hi, steps) AS (
    SELECT (SELECT coalesce(min(id), 1) FROM jobs),
           (SELECT coalesce(max(id), 0) + 1 FROM jobs),
           0
    UNION ALL
    SELECT CASE WHEN probe.id IS NOT NULL AND probe.id < search.hi
                     AND probe.created_at < coalesce($1::timestamptz, now() - $2::interval)
                THEN probe.id + 1
                ELSE search.lo END,
           CASE WHEN probe.id IS NULL OR probe.id >= search.hi
                THEN search.lo + (search.hi - search.lo) / 2
                WHEN probe.created_at < coalesce($1::timestamptz, now() - $2::interval)
                THEN search.hi
                ELSE probe.id END,
           search.steps + 1
    FROM search
    -- The first job at or after the middle of [lo, hi); none there halves the range.
    LEFT JOIN LATERAL (
        SELECT id, created_at FROM jobs
        WHERE id >= search.lo + (search.hi - search.lo) / 2
        ORDER BY id
        LIMIT 1
    ) AS probe ON true
    WHERE search.lo < search.hi AND search.steps < 128
)
SELECT lo FROM search ORDER BY steps DESC LIMIT 1

-- name: scheduled_jobs
-- READY jobs due later (run_after > now()), soonest first, after the cursor ($2, $3):
-- jobs_ready_pickup is ordered by priority first, so this walks it once per priority
-- (a skip scan over the distinct priorities, at most 100 of them), at most $4 entries
-- each, and merges them. $1: only this job type, among the entries walked.
-- Guard: a read of at most 100 * $4 index entries; moves nothing.
WITH RECURSIVE priorities(priority, n) AS (
    (SELECT priority, 1 FROM jobs WHERE status = 'READY' ORDER BY priority DESC LIMIT 1)
    UNION ALL
    SELECT (SELECT j.priority FROM jobs AS j
            WHERE j.status = 'READY' AND j.priority < p.priority
            ORDER BY j.priority DESC
            LIMIT 1),
           p.n + 1
    FROM priorities AS p
    WHERE p.priority IS NOT NULL AND p.n < 100
)
SELECT s.id, s.job_type, s.status, s.priority, s.attempts, s.max_attempts, s.run_after,
       s.created_at, s.finished_at, s.duration_ms, left(s.last_error, 300) AS last_error
FROM priorities AS p
CROSS JOIN LATERAL (
    SELECT id, job_type, status, priority, attempts, max_attempts, run_after, created_at,
           finished_at, duration_ms, last_error
    FROM jobs
    WHERE status = 'READY' AND priority = p.priority AND run_after > now()
      AND (run_after, id) > (coalesce($2::timestamptz, '-infinity'), coalesce($3::bigint, 0))
    ORDER BY priority DESC, run_after, id
    LIMIT $4
) AS s
WHERE $1::text IS NULL OR s.job_type = $1::text
ORDER BY s.run_after, s.id
LIMIT $5

-- name: jobs_by_ids
-- The jobs with these ids (at most as many as the array holds), newest first: what a
-- bulk action's confirmation shows.
-- Guard: a read of the primary key; moves nothing.
SELECT id, job_type, status, priority, attempts, max_attempts, run_after, created_at,
       finished_at, duration_ms, left(last_error, 300) AS last_error,
       status = 'READY' AND run_after > now() AS scheduled
FROM jobs
WHERE id = ANY($1::bigint[])
ORDER BY id DESC

-- name: bulk_candidates
-- The jobs of the statuses $1 that a bulk action over "all matching the filter" would
-- act on: ids in [$3, $4), of type $5 (NULL: any); newest first, at most $6. Each
-- status is looked for through its own index (jobs_ready_pickup, jobs_running,
-- jobs_finished), at most $2 entries of it, in the index's order.
-- Guard: a read of at most 4 * $2 index entries; moves nothing (each action's statement
-- checks every job's state again).
SELECT id, job_type, status, priority, attempts, max_attempts, run_after, created_at,
       finished_at, duration_ms, left(last_error, 300) AS last_error
FROM (
    (SELECT id, job_type, status, priority, attempts, max_attempts, run_after, created_at,
            finished_at, duration_ms, last_error
     FROM jobs WHERE status = 'READY' AND 'READY' = ANY($1::text[])
     ORDER BY priority DESC, run_after, id LIMIT $2)
    UNION ALL
    (SELECT id, job_type, status, priority, attempts, max_attempts, run_after, created_at,
            finished_at, duration_ms, last_error
     FROM jobs WHERE status = 'RUNNING' AND 'RUNNING' = ANY($1::text[])
     ORDER BY locked_by LIMIT $2)
    UNION ALL
    (SELECT id, job_type, status, priority, attempts, max_attempts, run_after, created_at,
            finished_at, duration_ms, last_error
     FROM jobs WHERE status = 'FAILED' AND finished_at IS NOT NULL AND 'FAILED' = ANY($1::text[])
     ORDER BY status, finished_at DESC LIMIT $2)
    UNION ALL
    (SELECT id, job_type, status, priority, attempts, max_attempts, run_after, created_at,
            finished_at, duration_ms, last_error
     FROM jobs
     WHERE status = 'CANCELLED' AND finished_at IS NOT NULL AND 'CANCELLED' = ANY($1::text[])
     ORDER BY status, finished_at DESC LIMIT $2)
) AS seen
WHERE id >= $3 AND id < $4
  AND ($5::text IS NULL OR job_type = $5::text)
ORDER BY id DESC
LIMIT $6
