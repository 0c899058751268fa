-- The per-type, per-minute rollup (table job_type_minutes): what workers ran, written by
-- them, read by the dashboard's page of a job type. No statement here moves a job.

-- name: add_type_minutes
-- A worker adds the counts it gathered since its last flush, one row per (type, minute),
-- in one statement. $2 is each row's age in seconds by the worker's clock (the middle of
-- its minute), so that the minute written is the database's (now() - age), never the
-- worker's clock. $7 holds the rows' run-time histograms one after another, $8 buckets
-- each. Rows are inserted in key order, so two workers adding rows of the same minutes
-- lock them in the same order (no deadlock).
-- Guard: moves no job. ON CONFLICT adds to the row another worker wrote: the row lock the
-- upsert takes makes concurrent additions add up (no lost update); histograms add up
-- element by element, the shorter padded with zeros.
INSERT INTO job_type_minutes AS m
    (job_type, minute, done, failed, retried, run_ms_sum, run_ms_buckets)
SELECT t.job_type,
       date_trunc('minute', now() - make_interval(secs => t.age)),
       t.done, t.failed, t.retried, t.run_ms_sum,
       ($7::integer[])[(t.i - 1) * $8 + 1 : t.i * $8]
FROM unnest($1::text[], $2::float8[], $3::integer[], $4::integer[], $5::integer[],
            $6::bigint[]) WITH ORDINALITY AS t(job_type, age, done, failed, retried,
                                              run_ms_sum, i)
ORDER BY 1, 2
ON CONFLICT (job_type, minute) DO UPDATE SET
    done = m.done + EXCLUDED.done,
    failed = m.failed + EXCLUDED.failed,
    retried = m.retried + EXCLUDED.retried,
    run_ms_sum = m.run_ms_sum + EXCLUDED.run_ms_sum,
    run_ms_buckets = ARRAY(
        SELECT coalesce(a, 0) + coalesce(b, 0)
        FROM unnest(m.run_ms_buckets, EXCLUDED.run_ms_buckets) WITH ORDINALITY AS u(a, b, k)
        ORDER BY k)

-- name: claim_depth_minute
-- Whose turn it is to sample this minute's READY jobs: the worker whose insert of the
-- minute's queue row ('') lands; the others get NULL. Also the seconds to the next
-- minute, when a worker next tries.
-- Guard: moves no job. The primary key lets one insert of the minute's row win; a
-- concurrent one waits for it, then does nothing.
WITH claim AS (
    INSERT INTO job_type_minutes (job_type, minute)
    VALUES ('', date_trunc('minute', now()))
    ON CONFLICT (job_type, minute) DO NOTHING
    RETURNING minute
)
SELECT (SELECT minute FROM claim) AS minute,
       extract(epoch FROM date_trunc('minute', now()) + interval '1 minute' - now())::float8
           AS next_in

-- name: sample_ready_depth
-- The READY jobs (due or not) per type for minute $1, counting at most $2 of them in all
-- through the pickup index (status_active's bound); the types seen in the last hour with
-- none READY get 0, and the queue's row ('') the total counted (at $2: the counts are
-- lower bounds).
-- Guard: a read of at most $2 READY rows; moves no job. Writes ready_depth of minute $1
-- only, in key order, in the transaction that claimed the minute (claim_depth_minute).
WITH ready AS (
    SELECT job_type, count(*)::integer AS n
    FROM (SELECT job_type FROM jobs WHERE status = 'READY' LIMIT $2) AS r
    GROUP BY job_type
), recent AS (
    SELECT DISTINCT job_type FROM job_type_minutes
    WHERE minute >= $1::timestamptz - interval '1 hour' AND job_type <> ''
), depths AS (
    SELECT job_type, coalesce(ready.n, 0) AS n FROM ready FULL JOIN recent USING (job_type)
    UNION ALL
    SELECT '', coalesce(sum(n), 0)::integer FROM ready
)
INSERT INTO job_type_minutes AS m (job_type, minute, ready_depth)
SELECT job_type, $1::timestamptz, n FROM depths ORDER BY job_type
ON CONFLICT (job_type, minute) DO UPDATE SET ready_depth = EXCLUDED.ready_depth

-- name: prune_type_minutes
-- Rows older than $1, at most $2 of them, the oldest first (through the minute index).
-- Run by the worker that sampled the minute, so one worker at a time.
-- Guard: moves no job; SKIP LOCKED leaves a row a flush holds for the next pass.
DELETE FROM job_type_minutes
WHERE (job_type, minute) IN (
    SELECT job_type, minute FROM job_type_minutes
    WHERE minute < now() - $1::interval
    ORDER BY minute
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)

-- name: type_slots
-- The rollup of type $1 from $2 on, summed in slots of $3 seconds (slot 0 starts at
-- $2): runs, the most READY jobs of the type sampled in the slot (depth), and the most of
-- all types (sampled: NULL when no worker sampled the slot). A range of the primary key.
-- Guard: a read of at most two rows per minute from $2 on; moves nothing.
SELECT floor(extract(epoch FROM minute - $2::timestamptz) / $3)::integer AS slot,
       coalesce(sum(done) FILTER (WHERE job_type = $1), 0)::bigint AS done,
       coalesce(sum(failed) FILTER (WHERE job_type = $1), 0)::bigint AS failed,
       coalesce(sum(retried) FILTER (WHERE job_type = $1), 0)::bigint AS retried,
       coalesce(sum(run_ms_sum) FILTER (WHERE job_type = $1), 0)::bigint AS run_ms_sum,
       max(ready_depth) FILTER (WHERE job_type = $1) AS depth,
       max(ready_depth) FILTER (WHERE job_type = '') AS sampled
FROM job_type_minutes
WHERE job_type IN ($1, '') AND minute >= $2::timestamptz
GROUP BY 1
ORDER BY 1

-- name: type_run_times
-- The run-time histogram of type $1 from $2 on: the buckets summed element by element
-- (NULL: no runs).
-- Guard: a read of at most one row per minute from $2 on; moves nothing.
SELECT array_agg(n ORDER BY k) FROM (
    SELECT k, sum(x)::bigint AS n
    FROM job_type_minutes AS m, unnest(m.run_ms_buckets) WITH ORDINALITY AS u(x, k)
    WHERE m.job_type = $1 AND m.minute >= $2::timestamptz
    GROUP BY k
) AS buckets
