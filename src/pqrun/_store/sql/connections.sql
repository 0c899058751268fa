-- name: switch_search_path
-- Switches the search_path of a connection the caller passed in (conn=) to the store's
-- schema for one statement, returning what it was so that it can be put back.
-- Guard: the session's search_path only (set_config, not a job row).
SELECT current_setting('search_path') AS was, set_config('search_path', $1, false) AS now

-- name: restore_search_path
-- Guard: the session's search_path only (set_config, not a job row).
SELECT set_config('search_path', $1, false)

-- name: listen_probe
-- A notification to the queue's own channel, sent on a worker's LISTEN connection itself
-- to check that the connection still hears (the worker waits for it to come back).
-- Guard: moves nothing: it touches no row; channel and payload are bound.
SELECT pg_notify($1, $2)

-- name: set_local
-- Settings of one transaction on a connection through a transaction pooler, where they
-- cannot be sent at connect (the outcome writer's lock_timeout and statement_timeout):
-- set_config(..., true) ends with the transaction, so nothing leaks to the next client
-- the pooler gives this server connection to.
-- Guard: the transaction's settings only (set_config, not a job row).
SELECT count(set_config(name, value, true))
FROM unnest($1::text[], $2::text[]) AS s(name, value)
