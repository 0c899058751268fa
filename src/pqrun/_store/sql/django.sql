-- name: current_search_path
-- The search_path of the connection, read by a Django migration before it sets its own
-- for ddl.sql (set_local), so that it can put it back for the statements Django runs
-- after it in the same transaction (its django_migrations row, for one).
-- Guard: a read of a setting; moves nothing.
SELECT current_setting('search_path')

-- name: recent_job_types
-- The job types the admin's filter offers: those the workers counted runs or READY jobs
-- of since $1 (job_type_minutes, through its minute index: never the jobs table), and
-- those of the stored schedules; '' is the whole queue's row, not a type.
-- Guard: a read of the rollup rows since $1 and of the schedules; moves nothing.
SELECT job_type FROM job_type_minutes WHERE minute >= $1 AND job_type <> ''
UNION
SELECT job_type FROM job_schedules
ORDER BY 1
LIMIT $2
