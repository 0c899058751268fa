"""The internals of PgJobStore, by audience (pqrun.store is the public facade).

``queries`` loads the named SQL statements of ``sql/*.sql``; ``connections`` holds the
pool and the connection rules every statement runs under; the other modules hold the
moves and reads of one audience each: the app (``enqueue``, ``interventions``,
``waiting``), the workers (``moves``, ``registry``, ``reaping``, ``schedules``),
operators (``maintenance``) and the dashboard and CLI (``inspection``).
"""
