"""Workflows: jobs enqueued together, some waiting for others (``store.workflow()``).

The waiting itself is the database's (ddl.sql: the triggers jobs_wait_for_dependencies
and jobs_release_dependents): a job enqueued with ``depends_on`` is WAITING until the
jobs it names are DONE, whoever enqueued it, from Python or SQL. docs/workflows.md.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pqrun.store import PgJobStore


class Workflow:
    """The jobs of one ``store.workflow()`` block: each ``enqueue`` joins the block's
    transaction, so all of them exist once it commits, or none does."""

    def __init__(self, store: PgJobStore) -> None:
        self._store = store
        #: The ids enqueued so far, in order.
        self.ids: list[int] = []

    async def enqueue(self, job_type: str, payload: Any = None, **options: Any) -> int:
        """``store.enqueue`` in the workflow's transaction (``depends_on=[...]`` may name
        the ids it returned before)."""
        job_id = await self._store.enqueue(job_type, payload, **options)
        self.ids.append(job_id)
        return job_id

    async def enqueue_many(self, jobs: Iterable[Mapping[str, Any]]) -> list[int]:
        """``store.enqueue_many`` in the workflow's transaction."""
        ids = await self._store.enqueue_many(jobs)
        self.ids.extend(ids)
        return ids


class WorkflowMethods:
    """PgJobStore's ``workflow()``."""

    @asynccontextmanager
    async def workflow(self) -> AsyncIterator[Workflow]:
        """Enqueue jobs that depend on each other in one transaction::

            async with store.workflow() as wf:
                resized = [await wf.enqueue("resize", {"image": i}) for i in images]
                await wf.enqueue("build_album", {"album": 7}, depends_on=resized)

        Nothing is enqueued if the block raises. Each job waits (WAITING) until the
        jobs in its ``depends_on`` are DONE.
        """
        store: PgJobStore = self  # type: ignore[assignment]
        async with store.transaction():
            yield Workflow(store)
