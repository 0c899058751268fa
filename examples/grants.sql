-- The least privileges a pqrun application role needs, for both the API side (enqueue,
-- enqueue_many) and workers (pickup, completion, reaper). Replace pqrun_app with your role.
-- Applied and exercised by tests/test_examples.py with a role that has nothing else.
--
-- Run as the owner of the jobs table (whoever applied ddl.sql):
--   psql "$DATABASE_URL" -v role=pqrun_app -f examples/grants.sql

GRANT USAGE ON SCHEMA public TO :"role";
GRANT SELECT, INSERT, UPDATE ON TABLE jobs TO :"role";
-- Workers register in job_workers, and the reaper removes the dead ones.
GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE job_workers TO :"role";
-- Claims of handlers with a rate or concurrency limit, and schedules (Worker(schedules=)).
GRANT SELECT, INSERT, UPDATE ON TABLE job_rate_limits, job_schedules TO :"role";
-- Workers count their runs per job type and minute (the dashboard's job type pages), and
-- delete those counts after two days.
GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE job_type_minutes TO :"role";
-- Claims read the paused job types; pausing and resuming (pqrun pause|resume, the
-- dashboard) insert and delete them.
GRANT SELECT, INSERT, DELETE ON TABLE job_type_pauses TO :"role";
-- enqueue_many draws ids from the table's identity sequence itself.
SELECT format('GRANT USAGE ON SEQUENCE %s TO %I', pg_get_serial_sequence('jobs', 'id'), :'role')
\gexec
-- DELETE for a role whose workers prune finished jobs (they do unless
-- WORKER_PRUNE_ENABLED=false; docs/operations.md#retention), or that runs `pqrun prune`:
-- GRANT DELETE ON TABLE jobs TO :"role";
