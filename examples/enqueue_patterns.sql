-- Enqueueing pqrun jobs from SQL: batches, triggers and pg_cron.
-- Every statement here is applied by tests/test_examples.py against a real database.
-- A worker notices these jobs like any other: job_type and payload are all it needs.

-- 1. One job, with everything optional left to the table defaults
--    (priority 0, due now, 5 attempts, the worker's default lease).
INSERT INTO jobs (job_type, payload)
VALUES ('send_email', '{"user_id": 123, "template": "welcome"}');

-- 2. A batch in one statement, deduplicated against active jobs. The ON CONFLICT clause
--    must repeat the dedupe index's predicate word for word so PostgreSQL can infer it.
CREATE TABLE IF NOT EXISTS conversations (
    id            bigint PRIMARY KEY,
    needs_summary boolean NOT NULL DEFAULT false
);
INSERT INTO conversations (id, needs_summary)
VALUES (1, true), (2, true), (3, false)
ON CONFLICT (id) DO NOTHING;

INSERT INTO jobs (job_type, payload, dedupe_key)
SELECT 'summarize', jsonb_build_object('conversation_id', c.id), 'summarize:conv:' || c.id
FROM conversations c
WHERE c.needs_summary
ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL AND status IN ('READY', 'RUNNING')
DO NOTHING;

-- 3. Delayed and prioritized: due in an hour, ahead of priority-0 work once due.
INSERT INTO jobs (job_type, payload, priority, run_after, max_attempts, timeout_seconds)
VALUES ('generate_report', '{"report_id": 7}', 10, now() + interval '1 hour', 3, 3600);

-- 4. A trigger: every conversation that starts needing a summary gets exactly one
--    active summarize job, in the same transaction as the change that caused it.
CREATE OR REPLACE FUNCTION enqueue_summary() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO jobs (job_type, payload, dedupe_key)
    VALUES ('summarize', jsonb_build_object('conversation_id', NEW.id),
            'summarize:conv:' || NEW.id)
    ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL AND status IN ('READY', 'RUNNING')
    DO NOTHING;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS conversations_enqueue_summary ON conversations;
CREATE TRIGGER conversations_enqueue_summary
    AFTER INSERT OR UPDATE OF needs_summary ON conversations
    FOR EACH ROW WHEN (NEW.needs_summary)
    EXECUTE FUNCTION enqueue_summary();

UPDATE conversations SET needs_summary = true WHERE id = 3;

-- 5. pg_cron: the same batch insert every five minutes. Runs only where the pg_cron
--    extension is installed (CREATE EXTENSION pg_cron needs it in
--    shared_preload_libraries); elsewhere this block does nothing.
DO $do$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_cron') THEN
        PERFORM cron.schedule(
            'enqueue-summaries',
            '*/5 * * * *',
            $job$
            INSERT INTO jobs (job_type, payload, dedupe_key)
            SELECT 'summarize', jsonb_build_object('conversation_id', c.id),
                   'summarize:conv:' || c.id
            FROM conversations c
            WHERE c.needs_summary
            ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL
                                       AND status IN ('READY', 'RUNNING')
            DO NOTHING
            $job$
        );
    END IF;
END
$do$;
