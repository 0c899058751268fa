-- name: enqueue
-- One job. With a dedupe_key an active job holds, nothing is inserted and that job's id
-- is returned. DO NOTHING rather than DO UPDATE: the existing job is not locked, so a
-- caller's open transaction never holds up the worker that runs that job. If the active
-- job was committed after this statement's snapshot, neither part returns a row and the
-- caller runs the statement again.
-- Guard: inserts READY only; the partial unique index jobs_dedupe_active (dedupe_key of
-- READY/RUNNING jobs) refuses a second active job with the key, and the existing job is
-- read, never locked.
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

-- name: enqueue_many
-- Many jobs in one statement. Ids are drawn up front so that each input row knows its
-- own, whatever order RETURNING comes back in. A row whose dedupe_key an active job holds
-- gets that job's id (NULL if that job is not in this statement's snapshot: the caller
-- asks again for those). Duplicate keys within one batch are merged before this. $9 is
-- the trace context of the enqueue span, the same for every row.
-- Guard: as enqueue, per row: jobs_dedupe_active refuses a second active job with a key;
-- an existing active job is read, never locked.
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
