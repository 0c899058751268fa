-- name: pickup
-- READY -> RUNNING. SKIP LOCKED lets concurrent pickups take disjoint rows without
-- waiting; the row lock it takes is what makes the status test in the UPDATE safe.
-- lease_id, the id of this transaction, names this claim: no other claim of any job has
-- it, so a move that names it can only be made by this run.
-- A job type with a row in job_type_pauses is passed over, in this statement: whatever
-- job types a worker asks for, no claim that begins after a pause committed takes a job
-- of that type. NOT IN, not NOT EXISTS: the planner reads the few pauses once into a
-- hashed subplan, a probe per job scanned, and keeps the pickup index scan; as an
-- anti-join it took the pauses for a filter that leaves almost nothing, and sorted
-- every READY job instead (40 ms, not 1.5, a claim of 100 among 100,000). Neither
-- column holds NULL, so NOT IN means NOT EXISTS here. (Thousands of pauses still hash
-- within work_mem.)
-- The chosen ids are an array the UPDATE reaches through the primary key, not a CTE joined
-- back: as a join, the planner hashed every READY row of a mid-sized table to find the
-- few hundred claimed (a sequential scan, 9 ms for 500 of 20,000, not 4). SKIP LOCKED
-- rows are locked once, by the subquery (an InitPlan, run once per statement).
-- Guard: READY and due, of a type not paused, locked by FOR UPDATE SKIP LOCKED, and READY
-- again in the UPDATE (rows other transactions hold are passed over).
UPDATE jobs AS j
SET status = 'RUNNING',
    attempts = j.attempts + 1,
    lease_id = txid_current(),
    heartbeat_at = now(),
    locked_at = now(),
    locked_by = $1,
    updated_at = now()
WHERE j.id = ANY(ARRAY(
        SELECT id
        FROM jobs
        WHERE status = 'READY'
          AND run_after <= now()
          AND ($2::text[] IS NULL OR job_type = ANY($2::text[]))
          AND job_type NOT IN (SELECT p.job_type FROM job_type_pauses AS p)
        ORDER BY priority DESC, run_after, id
        LIMIT $3
        FOR UPDATE SKIP LOCKED))
  -- The guard, in a form the partial index jobs_ready_pickup does not match (the same
  -- test: "C" is deterministic): matched, the planner may walk that whole index for the
  -- ids, as it did after a vacuum found the queue empty (177 ms for 500 of 20,000).
  AND j.status = 'READY' COLLATE "C"
-- The columns this UPDATE sets to what the worker knows (status, locked_by, heartbeat_at
-- equal to locked_at) are not sent back: pqrun.models.CLAIM_COLUMNS.
RETURNING j.id, j.job_type, j.payload::text AS payload, j.priority, j.attempts,
          j.max_attempts,
          -- Times a row may hold from SQL (even -infinity, or year 10000 on an old schema)
          -- come back within what a Python datetime can hold: one odd row must not make
          -- the whole batch unreadable after its claim committed.
          least(greatest(j.run_after, '0001-01-02 00:00+00'), '9999-12-30 00:00+00')
              AS run_after,
          j.timeout_seconds,
          -- The claim's time, which its jobs share, as microseconds since 1970, and
          -- updated_at only where it is not that time (an application's trigger may set
          -- either): asyncpg decodes a timestamptz at twenty times a bigint's cost
          -- (pqrun.models.CLAIM_TIMES). Both within what a datetime holds, as above, and
          -- compared so; a NULL stays NULL (greatest() would pass over it). (extract is
          -- exact from PostgreSQL 14; on 12 and 13 a float8, exact to the microsecond
          -- from 1834 to 2106, as the claim's own time is.)
          (extract(epoch FROM CASE WHEN j.locked_at IS NOT NULL
                                   THEN least(greatest(j.locked_at, '0001-01-02 00:00+00'),
                                              '9999-12-30 00:00+00') END)
           * 1000000)::bigint AS locked_at,
          j.lease_id, j.dedupe_key, j.last_error, j.duration_ms,
          least(greatest(j.created_at, '0001-01-02 00:00+00'), '9999-12-30 00:00+00')
              AS created_at,
          NULLIF(least(greatest(j.updated_at, '0001-01-02 00:00+00'), '9999-12-30 00:00+00'),
                 CASE WHEN j.locked_at IS NOT NULL
                      THEN least(greatest(j.locked_at, '0001-01-02 00:00+00'),
                                 '9999-12-30 00:00+00') END) AS updated_at,
          j.concurrency_key, j.trace_context,
          -- The same two times as timestamptz, for a connection that decodes one otherwise
          -- than asyncpg does by default (a caller's pool with a codec of its own: its
          -- Job holds times of that kind), asked for ($4) until the store knows; NULL
          -- otherwise, which costs nothing to decode. Within what a datetime holds too.
          CASE WHEN $4::boolean AND j.locked_at IS NOT NULL
               THEN least(greatest(j.locked_at, '0001-01-02 00:00+00'), '9999-12-30 00:00+00')
          END AS locked_at_decoded,
          CASE WHEN $4::boolean
               THEN least(greatest(j.updated_at, '0001-01-02 00:00+00'), '9999-12-30 00:00+00')
          END AS updated_at_decoded

-- name: limit_lock
-- Claims of a job type whose handler has limits (docs/flow-control.md) go one worker at a
-- time: each takes this transaction-scoped advisory lock, named after the queue's channel
-- and the job type, in a statement of its own before pickup_limited. Under READ
-- COMMITTED each statement sees what was committed when it began, so the claim that
-- follows the lock counts every claim committed before, including the previous holder's.
-- (Taking the lock inside the claim's own statement would count from a snapshot taken
-- before the wait: two workers could both see room for the last slot.) A worker that
-- finds the lock taken does not wait: another worker is claiming that type right now,
-- and this one looks again a moment later.
-- Guard: none on rows: the advisory lock itself is the guard that serialises claims of one
-- limited type.
SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))

-- name: pickup_limited
-- READY -> RUNNING for one limited job type, under limit_lock. How many to claim:
-- $3  at most this many (the worker's free slots),
-- $4  concurrency_limit: minus the jobs of the type RUNNING now,
-- $5  concurrency_limit_per_key: per concurrency_key (NULL keys count as one key),
-- choosing among the first $8 due jobs,
-- $6  rate_limit per $7: minus the claims recorded in job_rate_limits in the last $7.
-- Each claim is recorded there, by start time. The last column is in how many seconds the
-- rate limit has room again, set only when it was used up and due jobs remain (the
-- worker looks again then). A duration, not a time: the worker's clock may differ.
-- Times are statement_timestamp(): the transaction began before the lock wait.
-- A paused type (a row in job_type_pauses) has no candidates, as in pickup.
-- Guard: READY and due, of a type not paused, under limit_lock, locked by FOR UPDATE SKIP
-- LOCKED, READY again in the UPDATE; counts RUNNING rows of the type after the lock.
WITH running AS (
    SELECT count(*) AS total
    FROM jobs
    WHERE $4::integer IS NOT NULL AND status = 'RUNNING' AND job_type = $2
),
recent AS (
    SELECT count(*) AS started, min(s.at) AS oldest
    FROM job_rate_limits AS r, unnest(r.starts) AS s(at)
    WHERE $6::integer IS NOT NULL AND r.job_type = $2
      AND s.at > statement_timestamp() - $7::interval
),
room AS (
    SELECT greatest(0, least($3::integer,
                             COALESCE($4::integer - running.total, $3::integer),
                             COALESCE($6::integer - recent.started, $3::integer))) AS n
    FROM running, recent
),
candidates AS (
    SELECT id, concurrency_key, priority, run_after
    FROM jobs
    WHERE status = 'READY' AND run_after <= now() AND job_type = $2
      AND NOT EXISTS (SELECT 1 FROM job_type_pauses AS p WHERE p.job_type = $2)
    ORDER BY priority DESC, run_after, id
    LIMIT (SELECT CASE WHEN n = 0 THEN 0 WHEN $5::integer IS NULL THEN n
                       ELSE greatest(n, $8::integer) END
           FROM room)
    FOR UPDATE SKIP LOCKED
),
running_per_key AS (
    SELECT concurrency_key, count(*) AS total
    FROM jobs
    WHERE $5::integer IS NOT NULL AND status = 'RUNNING' AND job_type = $2
    GROUP BY concurrency_key
),
ranked AS (
    SELECT c.id, c.priority, c.run_after,
           COALESCE(k.total, 0) + row_number() OVER (
               PARTITION BY c.concurrency_key ORDER BY c.priority DESC, c.run_after, c.id
           ) AS running_with_it
    FROM candidates AS c
    LEFT JOIN running_per_key AS k ON k.concurrency_key IS NOT DISTINCT FROM c.concurrency_key
),
chosen AS (
    SELECT id
    FROM ranked
    WHERE $5::integer IS NULL OR running_with_it <= $5::integer
    ORDER BY priority DESC, run_after, id
    LIMIT (SELECT n FROM room)
),
claimed AS (
    UPDATE jobs AS j
    SET status = 'RUNNING',
        attempts = j.attempts + 1,
        lease_id = txid_current(),
        heartbeat_at = statement_timestamp(),
        locked_at = statement_timestamp(),
        locked_by = $1,
        updated_at = statement_timestamp()
    -- The chosen ids by the primary key, as in pickup (a join may hash every READY row).
    WHERE j.id = ANY(ARRAY(SELECT id FROM chosen))
      AND j.status = 'READY' COLLATE "C"  -- not matching jobs_ready_pickup, as in pickup
    -- The claim's columns (pqrun.models.CLAIM_COLUMNS), readable whatever the row holds,
    -- as in pickup.
    RETURNING j.id, j.job_type, j.payload::text AS payload, j.priority, j.attempts,
              j.max_attempts,
              least(greatest(j.run_after, '0001-01-02 00:00+00'), '9999-12-30 00:00+00')
                  AS run_after,
              j.timeout_seconds,
              -- The claim's time as microseconds, updated_at where it differs, as in
              -- pickup.
              (extract(epoch FROM CASE WHEN j.locked_at IS NOT NULL
                                       THEN least(greatest(j.locked_at, '0001-01-02 00:00+00'),
                                                  '9999-12-30 00:00+00') END)
               * 1000000)::bigint AS locked_at,
              j.lease_id, j.dedupe_key, j.last_error, j.duration_ms,
              least(greatest(j.created_at, '0001-01-02 00:00+00'), '9999-12-30 00:00+00')
                  AS created_at,
              NULLIF(least(greatest(j.updated_at, '0001-01-02 00:00+00'),
                           '9999-12-30 00:00+00'),
                     CASE WHEN j.locked_at IS NOT NULL
                          THEN least(greatest(j.locked_at, '0001-01-02 00:00+00'),
                                     '9999-12-30 00:00+00') END) AS updated_at,
              j.concurrency_key, j.trace_context,
              -- The two times as timestamptz, asked for ($9) as in pickup.
              CASE WHEN $9::boolean AND j.locked_at IS NOT NULL
                   THEN least(greatest(j.locked_at, '0001-01-02 00:00+00'),
                              '9999-12-30 00:00+00')
              END AS locked_at_decoded,
              CASE WHEN $9::boolean
                   THEN least(greatest(j.updated_at, '0001-01-02 00:00+00'),
                              '9999-12-30 00:00+00')
              END AS updated_at_decoded
),
recorded AS (
    INSERT INTO job_rate_limits AS r (job_type, starts)
    SELECT $2, array_fill(statement_timestamp(), ARRAY[(SELECT count(*) FROM claimed)::integer])
    WHERE $6::integer IS NOT NULL AND EXISTS (SELECT 1 FROM claimed)
    ON CONFLICT (job_type) DO UPDATE
    SET starts = ARRAY(SELECT s.at FROM unnest(r.starts) AS s(at)
                       WHERE s.at > statement_timestamp() - $7::interval) || EXCLUDED.starts
),
rate AS (
    -- ($6 IS NOT NULL first: without a rate limit, the EXISTS is never run. Unguarded, a
    -- NULL comparison still ran it, a scan of jobs per claim.)
    SELECT CASE WHEN $6::integer IS NOT NULL
                 AND recent.started + (SELECT count(*) FROM claimed) >= $6::integer
                 AND EXISTS (SELECT 1 FROM jobs
                             WHERE status = 'READY' AND run_after <= now() AND job_type = $2
                               AND id NOT IN (SELECT id FROM claimed))
                 -- (a paused type's due jobs are no work to wait for)
                 AND NOT EXISTS (SELECT 1 FROM job_type_pauses AS p WHERE p.job_type = $2)
                THEN extract(epoch FROM COALESCE(recent.oldest, statement_timestamp())
                                        + $7::interval - statement_timestamp())::float8
           END AS room_in_seconds
    FROM recent
)
SELECT claimed.*, rate.room_in_seconds
FROM rate LEFT JOIN claimed ON true

-- name: wake_workers
-- Wake idle workers: a limited job type may have room again.
-- Guard: moves nothing: a notification only.
SELECT pg_notify($1, '')

-- name: jobs_left_behind
-- Whether any of these hints ($1 job types, $2 and $3 the first and last id each
-- statement inserted) left a job behind: one of that type, in that id range, still
-- READY and due. Asked a moment after a notification by a worker whose turn it was,
-- when some workers were not woken; if one was left, every worker is woken. LATERAL and
-- LIMIT 1 per hint stop each look at the first job found (the planner cannot see the
-- ranges' sizes through unnest): by the primary key from the first id, or, when the
-- statistics show few READY jobs, through the pickup index, the smaller read when most
-- of the range was claimed already (not forced either way). A job of a
-- paused type is not left behind: no claim would take it, so waking every worker for it
-- would only make each of them claim nothing.
-- Guard: a read without locks; moves nothing.
SELECT EXISTS (
    SELECT 1
    FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS hint(job_type, first_id, last_id)
    CROSS JOIN LATERAL (
        SELECT 1 FROM jobs AS j
        WHERE j.id BETWEEN hint.first_id AND hint.last_id AND j.job_type = hint.job_type
          AND j.status = 'READY' AND j.run_after <= now()
        ORDER BY j.id
        LIMIT 1
    ) AS left_behind
    WHERE hint.job_type NOT IN (SELECT p.job_type FROM job_type_pauses AS p)
)
