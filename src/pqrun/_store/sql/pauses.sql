-- Pausing a job type cluster-wide (store.pause/resume, `pqrun pause|resume`, the
-- dashboard's job type page). A row of job_type_pauses is the pause itself: the claims
-- (claims.sql) pass over the READY jobs of a type that has one, in the same statement.

-- name: pause_type
-- Pause job type $1, for reason $2 (NULL: none given). Returns the type when this made
-- the pause, nothing when the type was already paused (its first pause, time and reason,
-- stay). Claims that begin after the commit take no job of the type.
-- Guard: moves no job; the primary key makes pausing a paused type change nothing.
INSERT INTO job_type_pauses (job_type, reason)
VALUES ($1, $2)
ON CONFLICT (job_type) DO NOTHING
RETURNING job_type

-- name: resume_type
-- Resume job type $1, and wake the idle workers (an empty notification on channel $2,
-- sent when the delete commits) so that its due jobs are claimed now, not at the next
-- poll. Returns the type when it was paused, nothing otherwise.
-- Guard: moves no job; deletes only the row of that type, and wakes only if there was one.
WITH resumed AS (
    DELETE FROM job_type_pauses WHERE job_type = $1 RETURNING job_type
),
woken AS (SELECT pg_notify($2, '') WHERE EXISTS (SELECT 1 FROM resumed))
SELECT resumed.job_type FROM resumed LEFT JOIN woken ON true

-- name: paused_types
-- The paused job types, by name, at most $1 of them.
-- Guard: a read of the pauses' primary key, at most $1 rows; moves nothing.
SELECT job_type, paused_at, reason
FROM job_type_pauses
ORDER BY job_type
LIMIT $1
