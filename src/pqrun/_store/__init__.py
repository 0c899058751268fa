"""The internals of PgJobStore (pqrun.store is the public facade), by audience.

Shared by all: ``queries`` (the named statements of ``sql/*.sql``, loaded at import),
``connections`` (the pool, the statement timeout, the schema's search_path, the errors
it translates), ``secrets`` (passwords out of messages), ``rows`` (a new job's checked
columns, the claim a move names) and ``schema_objects`` (what ddl.sql creates).

One module per audience, each a class of PgJobStore's methods over one
StoreConnections: the app's ``enqueue``, ``waiting`` and ``interventions`` (cancel,
retry); the workers' ``moves`` (claims and outcomes), ``registry`` (heartbeats),
``reaping`` and ``schedules``; operators' ``maintenance`` (setup, check, prune); the
dashboard's and CLI's ``inspection``.
"""
