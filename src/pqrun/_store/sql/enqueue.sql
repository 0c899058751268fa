-- name: enqueue
-- One job. With a dedupe_key an active job holds, nothing is inserted and that job's id
-- is returned. DO NOTHING rather than DO UPDATE: the existing job is not locked, so a
-- caller's open transaction never holds up the worker that runs that job. If the active
-- job was committed after this statement's snapshot, neither part returns a row and the
-- caller runs the statement again.
-- With depends_on ($10), the trigger jobs_wait_for_dependencies makes it WAITING (or
-- CANCELLED, a dependency having failed) under a lock on the jobs it depends on.
-- Guard: inserts READY (or, with depends_on, what that trigger decides) only; the
-- partial unique index jobs_dedupe_active (dedupe_key of READY/RUNNING jobs) refuses a
-- second active job with the key, and the existing job is read, never locked.
WITH inserted AS (
    INSERT INTO jobs (job_type, payload, priority, run_after, dedupe_key, max_attempts,
                      timeout_seconds, concurrency_key, depends_on, on_dependency_failure,
                      trace_context)
    VALUES ($1, $2::text::jsonb, $3, COALESCE($4::timestamptz, now() + $5::interval), $6,
            $7, $8, $9, $10::text::bigint[], $11, $12)
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

-- name: enqueue_many
-- Many jobs in one statement. Ids are drawn up front so that each input row knows its
-- own, whatever order RETURNING comes back in. A row whose dedupe_key an active job holds
-- gets that job's id (NULL if that job is not in this statement's snapshot: the caller
-- asks again for those). Duplicate keys within one batch are merged before this. $9 is
-- the trace context of the enqueue span, the same for every row. A depends_on entry -n
-- names the n-th row of this statement: inserted in order, a row's trigger sees the rows
-- before it (as for enqueue, jobs_wait_for_dependencies decides a dependent's status).
-- Guard: as enqueue, per row: jobs_dedupe_active refuses a second active job with a key;
-- an existing active job is read, never locked.
WITH input AS (
    SELECT nextval(pg_get_serial_sequence('jobs', 'id')) AS id, t.*
    FROM unnest($1::text[], $2::text[], $3::integer[], $4::timestamptz[], $5::interval[],
                $6::text[], $7::integer[], $8::integer[], $9::text[], $10::text[], $11::text[])
         WITH ORDINALITY AS t(job_type, payload, priority, run_at, delay, dedupe_key,
                              max_attempts, timeout_seconds, concurrency_key, depends_on,
                              on_dependency_failure, position)
),
inserted AS (
    INSERT INTO jobs (id, job_type, payload, priority, run_after, dedupe_key, max_attempts,
                      timeout_seconds, concurrency_key, depends_on, on_dependency_failure,
                      trace_context)
    SELECT input.id, job_type, payload::jsonb, priority, COALESCE(run_at, now() + delay),
           dedupe_key, max_attempts, timeout_seconds, concurrency_key,
           CASE WHEN input.depends_on IS NOT NULL THEN
               (SELECT array_agg(COALESCE(earlier.id, d.n) ORDER BY d.i)
                FROM unnest(input.depends_on::bigint[]) WITH ORDINALITY AS d(n, i)
                LEFT JOIN input AS earlier ON d.n < 0 AND earlier.position = -d.n)
           END,
           on_dependency_failure, $12::text
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
