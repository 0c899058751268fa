"""A worker process with no web server: scale these separately from the API.

    DATABASE_URL=postgresql://user@host/db WORKER_CONCURRENCY=4 python -m examples.worker_only

Stops gracefully on SIGTERM or Ctrl-C: running jobs get WORKER_SHUTDOWN_GRACE seconds,
the rest go back to READY at once.
"""

from __future__ import annotations

import asyncio
import logging

from examples.handlers import HANDLERS
from pqrun import PgJobStore, Worker


async def main() -> None:
    store = PgJobStore()  # the DSN comes from PQRUN_DSN or DATABASE_URL
    worker = Worker(store=store, handlers=HANDLERS)
    await worker.run()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(main())
