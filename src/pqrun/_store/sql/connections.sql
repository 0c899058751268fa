-- name: listen_probe
-- A notification to the queue's own channel, sent on a worker's LISTEN connection itself
-- to check that the connection still hears (the worker waits for it to come back).
-- Guard: moves nothing: it touches no row; channel and payload are bound.
SELECT pg_notify($1, $2)

-- name: hand_over_due_times
-- A worker that stops tells every worker when it meant to look for due jobs again ($2,
-- 'due-in:<seconds>' payloads): its turns for delayed jobs, its retries and snoozes.
-- Each worker that hears one also looks then.
-- Guard: moves nothing: it touches no row; channel and payloads are bound.
SELECT pg_notify($1, hint) FROM unnest($2::text[]) AS hint

-- name: database_clock
-- The database's clock (epoch seconds), for due times in notifications: a worker
-- measures how far its own clock is off.
-- Guard: moves nothing: a read of the clock.
SELECT extract(epoch FROM clock_timestamp())::float8

-- name: set_local
-- Settings of one transaction on a connection through a transaction pooler, where they
-- cannot be sent at connect (the outcome writer's lock_timeout and statement_timeout):
-- set_config(..., true) ends with the transaction, so nothing leaks to the next client
-- the pooler gives this server connection to.
-- Guard: the transaction's settings only (set_config, not a job row).
SELECT count(set_config(name, value, true))
FROM unnest($1::text[], $2::text[]) AS s(name, value)
