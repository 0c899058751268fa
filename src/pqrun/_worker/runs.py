"""The claims a worker holds, and the in-process states of one run.

A claim is a job row this worker moved to RUNNING, named by ``(job id, lease_id)``: the
lease tells this run from a later run of the same job. From its claim until its outcome
is written (or it is put back, or found no longer ours) a claim is *held*: the worker's
heartbeats list it, which keeps the reaper off it. In process, a claim goes through::

    claimed ──► BUFFERED ──► RUNNING ──────────────────────► ANSWERED ──► written / lost
       │           │           │  ▲                                │
       │           │           │  └─ (went on after the grace) ─┐  │
       │           │           ├──► CANCEL_REQUESTED ──► ANSWERED (cancelled)
       │           │           └──► RELEASED ─────────────┴──► put back (answer dropped)
       │           └──► put back (shutdown, waited too long, every slot stayed busy)
       │                / dropped (not ours any more)
       └──► dropped (found not ours while buffered)

- BUFFERED: claimed, waiting in the buffer for a free slot (``RunRegistry.buffer``).
- RUNNING: a slot runs its handler (a ``Run`` in ``RunRegistry.running``); whatever it
  answers is handed to the outcome writer.
- CANCEL_REQUESTED: the row says the claim is no longer ours (``store.cancel()``, or the
  reaper took it back): the slot's task is cancelled, and the handler's CancelledError is
  the run's end, "cancelled". A handler in a thread cannot be stopped: it stays RUNNING,
  and the database ignores its answer.
- RELEASED: shutdown (or a drain that stops early) cancelled the handler to put its job
  back to READY; whatever the handler answers now is dropped. A handler that goes on past
  the cancellation keeps its job: it moves back to where it was (RUNNING or
  CANCEL_REQUESTED), and its answer is written if it comes in time.
- ANSWERED: the run handed an outcome to the writer, or ended cancelled; nothing is left
  to put back for it. The claim stays held until the writer has written the outcome
  (or found it moot): then it is dropped (``RunRegistry.drop``).

The claim is held in every state but the last; a claim is dropped exactly once.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pqrun.models import Job

if TYPE_CHECKING:
    from .store_protocol import WorkerStore

logger = logging.getLogger("pqrun")

Claim = tuple[int, int | None]  # (job id, lease_id)


def claim_of(job: Job) -> Claim:
    return (job.id, job.lease_id)


class RunState(enum.Enum):
    """Where one run of a handler is; see the module docstring for the moves."""

    RUNNING = "running"
    CANCEL_REQUESTED = "cancel requested"
    RELEASED = "released"
    ANSWERED = "answered"


@dataclass(slots=True, eq=False)
class Run:
    """A job whose handler a slot is running."""

    job: Job
    task: asyncio.Task[Any]
    # A plain function runs in a thread, which cannot be interrupted.
    is_thread: bool = False
    state: RunState = RunState.RUNNING
    # The claim was found no longer ours: a CancelledError in the handler is the job's
    # end. Kept through a release, which a handler that goes on may undo.
    claim_lost: bool = False
    # The cancel asked for the lost claim was taken back from the slot's task
    # (Task.uncancel()), so that it does not end the slot's next job.
    cancel_consumed: bool = False
    _before_release: RunState = field(default=RunState.RUNNING)

    @property
    def released(self) -> bool:
        return self.state is RunState.RELEASED

    @property
    def answered(self) -> bool:
        return self.state is RunState.ANSWERED

    def request_cancel(self) -> bool:
        """The claim is lost: stop the handler. True the first time it is asked."""
        first = not self.claim_lost
        self.claim_lost = True
        if self.state is RunState.RUNNING:
            self.state = RunState.CANCEL_REQUESTED
        elif self.state is RunState.RELEASED:
            self._before_release = RunState.CANCEL_REQUESTED
        self.task.cancel()
        return first

    def release(self) -> None:
        """Shutdown puts the job back: cancel the handler and drop what it answers."""
        if self.state is not RunState.RELEASED:
            self._before_release = self.state
        self.state = RunState.RELEASED
        self.task.cancel()

    def keep(self) -> None:
        """The handler went on past its cancellation: its job stays RUNNING, and its
        answer is written after all (undoes ``release``)."""
        if self.state is RunState.RELEASED:
            self.state = self._before_release

    def answer(self) -> None:
        """The handler's answer is handed on (or the run ended cancelled)."""
        self.state = RunState.ANSWERED


class RunRegistry:
    """Every claim a worker holds (what its heartbeats list), the buffer of claimed jobs
    not started yet, and the runs under way (a set: a job may be run twice)."""

    def __init__(self) -> None:
        self.held: dict[Claim, Job] = {}
        self.buffer: deque[tuple[Job, float]] = deque()  # (job, monotonic time claimed)
        self.running: set[Run] = set()
        self.job_ready = asyncio.Event()  # the buffer has jobs (or: stopping)
        self.outcomes_written = 0

    def held_jobs(self) -> list[Job]:
        return list(self.held.values())

    def started_job_ids(self) -> list[int]:
        """The jobs whose handler a slot runs now (the others held wait or are done)."""
        return [run.job.id for run in self.running]

    def holds(self, job: Job) -> bool:
        return claim_of(job) in self.held

    def holds_job_id(self, job_id: int) -> bool:
        return any(job_id == held_id for held_id, _lease in self.held)

    def hold(self, jobs: Iterable[Job]) -> None:
        for job in jobs:
            self.held[claim_of(job)] = job

    def drop(self, job: Job) -> None:
        """The claim ends: written, found moot, put back or not ours any more."""
        self.held.pop(claim_of(job), None)

    def take_buffer(self) -> list[Job]:
        """Empty the buffer: the jobs claimed but not started."""
        jobs = [job for job, _ in self.buffer]
        self.buffer.clear()
        return jobs

    def start_run(self, job: Job, task: asyncio.Task[Any], *, is_thread: bool) -> Run:
        run = Run(job, task, is_thread=is_thread)
        self.running.add(run)
        return run

    def lose(self, lost: set[Claim]) -> None:
        """Stop runs whose claim the row says is no longer ours, and drop them unstarted.

        Cancelled, or taken back by the reaper: whatever they answer would be refused.
        """
        if any(claim_of(job) in lost for job, _ in self.buffer):
            self.buffer = deque((job, at) for job, at in self.buffer if claim_of(job) not in lost)
        running = {claim_of(run.job) for run in self.running}
        for claim in lost - running:
            self.held.pop(claim, None)  # not started: nothing more will come of it
        for run in list(self.running):
            # A slot is in ``running`` only while it awaits the handler, so the
            # cancellation lands there. A thread cannot be stopped: it runs to its end.
            if claim_of(run.job) in lost and not run.is_thread and run.request_cancel():
                logger.warning(
                    "job %s is no longer this worker's (cancelled or taken back); "
                    "stopping its handler",
                    run.job.id,
                    extra={"job_id": run.job.id, "job_type": run.job.job_type},
                )


async def release_jobs(
    store: WorkerStore, registry: RunRegistry, worker_id: str, jobs: list[Job], why: str
) -> None:
    """Put ``jobs`` back to READY (or, when that fails, leave them to the reaper)."""
    reason = f"{why} (worker {worker_id}); put back to READY"
    for job in jobs:
        # Put back, or (when that fails) left to the reaper: not ours to run either way.
        registry.drop(job)
    try:
        released = await store.release(jobs, reason)
    except Exception as exc:
        logger.error(
            "worker %s could not put jobs %s back to READY (%s: %s); the reaper will "
            "recover them once their heartbeat is stale",
            worker_id,
            [j.id for j in jobs],
            type(exc).__name__,
            exc,
        )
        return
    logger.warning("worker %s put %d jobs back to READY: %s", worker_id, len(released), why)
