-- name: prune_lock
-- One pruner at a time per queue, like the reaper, under a lock of its own.
-- Guard: none on rows: the advisory lock lets one pruner act at a time per queue.
SELECT pg_try_advisory_xact_lock(hashtext($1 || ':prune'))

-- name: prune_finished
-- (DONE, FAILED or CANCELLED) $1, finished more than $2 ago -> deleted, at most $3 rows:
-- a short transaction that locks few rows, through the jobs_finished index. SKIP LOCKED:
-- a row someone is retrying right now is left for the next pass; the DELETE repeats the
-- status, so a job that left $1 meanwhile is not deleted.
-- Guard: status $1 finished before now() - $2, locked FOR UPDATE SKIP LOCKED; the DELETE
-- repeats the status.
WITH doomed AS (
    SELECT id
    FROM jobs
    WHERE status = $1 AND finished_at IS NOT NULL AND finished_at < now() - $2::interval
    ORDER BY status, finished_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
DELETE FROM jobs AS j
USING doomed
WHERE j.id = doomed.id AND j.status = $1

-- name: schema_objects
-- What `pqrun check` compares with what ddl.sql creates.
-- Guard: a read of the catalogs; moves nothing.
SELECT n.nspname AS schema,
       ARRAY(SELECT attname::text FROM pg_attribute
             WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped) AS columns,
       ARRAY(SELECT i.relname::text FROM pg_index AS x JOIN pg_class AS i
             ON i.oid = x.indexrelid WHERE x.indrelid = c.oid) AS indexes,
       ARRAY(SELECT tgname::text FROM pg_trigger
             WHERE tgrelid = c.oid AND NOT tgisinternal) AS triggers,
       ARRAY(SELECT t.relname::text FROM pg_class AS t
             WHERE t.relnamespace = n.oid AND t.relkind IN ('r', 'p')) AS tables,
       ARRAY(SELECT a.attname::text FROM pg_attribute AS a
             WHERE a.attrelid = to_regclass(quote_ident(n.nspname) || '.job_workers')
               AND a.attnum > 0 AND NOT a.attisdropped) AS worker_columns
FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass('jobs')

-- name: store_identity
-- The server, database and jobs table a connection reaches: a store's own connections
-- (to direct_dsn, or opened as a caller's pool opens its) must reach the same as its
-- pool. The system identifier tells two servers built alike apart (NULL where the role
-- may not read it: then database and table alone). Also the isolation its transactions
-- have by default: the claims need READ COMMITTED, and ask for it where it is not.
-- Guard: a read of the catalogs; moves nothing.
SELECT CASE WHEN has_function_privilege('pg_control_system()', 'EXECUTE')
            THEN (SELECT system_identifier FROM pg_control_system())::text END AS server,
       current_database() AS database,
       to_regclass('jobs')::oid::bigint AS jobs_oid,
       current_setting('default_transaction_isolation') AS default_isolation

-- name: jobs_schema
-- The schema holding the jobs table (NULL: not in the search_path). Notifications go to
-- the channel 'pqrun:<schema>', so queues in different schemas do not wake each other.
-- The channel name is computed as in ddl.sql's trigger function: a channel name is at
-- most 63 bytes, so a long schema name is replaced by its md5.
-- Guard: a read of the catalogs; moves nothing.
SELECT CASE WHEN octet_length('pqrun:' || n.nspname) <= 63 THEN 'pqrun:' || n.nspname
            ELSE 'pqrun:' || md5(n.nspname) END
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass('jobs')

-- name: create_schema
-- Creates the store's schema for setup(). An identifier cannot be a bound parameter, so
-- PostgreSQL itself quotes the (already validated) name with format('%I').
-- Guard: builds a statement; the caller runs it. The name is quoted by format(%I).
SELECT format('CREATE SCHEMA IF NOT EXISTS %I', $1::text)

-- name: drop_schema
-- Drops a schema with everything in it: for pqrun.testing's temporary queues only.
-- Guard: builds a statement; the caller runs it. The name is quoted by format(%I).
SELECT format('DROP SCHEMA IF EXISTS %I CASCADE', $1::text)

-- name: vacuum_state
-- What a vacuum of the jobs table depends on (no row: there is no jobs table):
-- dead_rows: the dead row versions it holds, as the statistics count them. Every claim
--   and every completion leaves one, and a claimed job leaves a dead entry in the pickup
--   index that each later claim steps over until a vacuum removes it.
-- changes: rows updated or deleted so far (since the statistics were reset): it only
--   grows, where autovacuum resets dead_rows even when it skipped the indexes.
-- vacuums, seconds_since_vacuum: vacuums run by hand (workers', operators'; not
--   autovacuum's, which may skip the indexes) so far, and since the last one ended.
-- vacuuming: whether one runs now (autovacuum's, another worker's).
-- may_vacuum: whether this role may: the owner of the table or of the database (or a
--   member of that role; superusers are members of every role) and, from PostgreSQL 17,
--   a role with the MAINTAIN privilege on it.
-- Guard: a read of the statistics and catalogs; moves nothing.
SELECT COALESCE(s.n_dead_tup, 0) AS dead_rows,
       COALESCE(s.n_tup_upd + s.n_tup_del, 0) AS changes,
       COALESCE(s.vacuum_count, 0) AS vacuums,
       extract(epoch FROM now() - s.last_vacuum)::float8 AS seconds_since_vacuum,
       EXISTS (SELECT 1 FROM pg_stat_progress_vacuum AS p WHERE p.relid = c.oid)
           AS vacuuming,
       pg_has_role(c.relowner, 'USAGE')
       OR pg_has_role((SELECT datdba FROM pg_database WHERE datname = current_database()),
                      'USAGE')
       OR (current_setting('server_version_num')::integer >= 170000
           AND has_table_privilege(c.oid, 'MAINTAIN')) AS may_vacuum
FROM pg_class AS c
LEFT JOIN pg_stat_user_tables AS s ON s.relid = c.oid
WHERE c.oid = to_regclass('jobs')

-- name: jobs_statistics
-- has_statistics: whether the planner has statistics on jobs.status, which only ANALYZE
--   gathers (from the rows there at the time). Without them it takes READY jobs for rare,
--   and a claim among thousands of them sorts them all instead of walking the pickup
--   index. (pg_stats is matched by name, which costs more the more tables are named jobs:
--   workers ask only until the answer is yes.)
-- has_rows: whether the table holds a row, read from the table itself (the statistics
--   views may have been reset).
-- Guard: a read of the catalogs and of one row at most, without locks; moves nothing.
-- pg_stats is only read for a table that holds rows (AND stops at the first false);
-- MATERIALIZED, so that the table is looked at once.
WITH r AS MATERIALIZED (SELECT EXISTS (SELECT 1 FROM jobs) AS has_rows)
SELECT r.has_rows,
       r.has_rows AND EXISTS (
           SELECT 1
           FROM pg_class AS c
           JOIN pg_namespace AS n ON n.oid = c.relnamespace
           JOIN pg_stats AS st ON st.schemaname = n.nspname AND st.tablename = c.relname
           WHERE c.oid = to_regclass('jobs') AND st.attname = 'status') AS has_statistics
FROM r

-- name: vacuum_jobs
-- Removes the dead row versions of jobs and their index entries. INDEX_CLEANUP ON: on a
-- big table of kept results the dead rows fill few pages, and VACUUM would otherwise skip
-- the indexes, leaving the pickup index's dead entries in the claims' way. SKIP_LOCKED:
-- when another vacuum holds the table, this one does nothing rather than wait (it says
-- so in a WARNING, SQLSTATE 55P03). It runs on a connection of its own, opened with
-- statement_timeout 0: a vacuum takes as long as it takes, and a timeout set for the
-- role or database must not cut every one short.
-- Guard: moves no job: VACUUM removes only row versions no transaction can see. It holds
-- a lock that DDL and TRUNCATE wait for; lock_waiters tells the vacuuming worker to give
-- way, as autovacuum does.
VACUUM (SKIP_LOCKED, INDEX_CLEANUP ON) jobs

-- name: analyze_jobs
-- Gathers the planner's statistics on jobs (a sample of at most 30,000 rows at the
-- default statistics target: quick whatever the table's size). SKIP_LOCKED: while a
-- vacuum or another ANALYZE holds the table, this does nothing (a WARNING, 55P03). Run
-- with a statement_timeout of its own (SET LOCAL, 60 s): a shorter one set for the role
-- or database must not cut every one short on a big, cold table.
-- Guard: moves no job; reads a sample of rows without locking them. DDL on jobs waits
-- for it while it runs (less than a second on a warm table; once per table; 60 s at
-- most).
ANALYZE (SKIP_LOCKED) jobs

-- name: lock_waiters
-- Whether anyone waits for a lock on the jobs table itself (DDL, TRUNCATE, LOCK TABLE:
-- claims and completions never do), so that a vacuum in their way is cancelled.
-- pg_locks covers every database of the server, where a table's oid can repeat.
-- Guard: a read of pg_locks; moves nothing.
SELECT EXISTS (
    SELECT 1 FROM pg_locks
    WHERE locktype = 'relation' AND relation = to_regclass('jobs') AND NOT granted
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
)
