-- name: listen_probe
-- A notification to the queue's own channel, sent on a worker's LISTEN connection itself
-- to check that the connection still hears (the worker waits for it to come back).
-- Guard: moves nothing: it touches no row; channel and payload are bound.
SELECT pg_notify($1, $2)

-- name: hand_over_hints
-- A worker that stops sends the notifications of delayed jobs whose turn it had ($2,
-- 'jobs:...' payloads with what is left of their delay) again, for the others' turns.
-- Guard: moves nothing: it touches no row; channel and payloads are bound.
SELECT pg_notify($1, hint) FROM unnest($2::text[]) AS hint

-- name: set_local
-- Settings of one transaction on a connection through a transaction pooler, where they
-- cannot be sent at connect (the outcome writer's lock_timeout and statement_timeout):
-- set_config(..., true) ends with the transaction, so nothing leaks to the next client
-- the pooler gives this server connection to.
-- Guard: the transaction's settings only (set_config, not a job row).
SELECT count(set_config(name, value, true))
FROM unnest($1::text[], $2::text[]) AS s(name, value)
