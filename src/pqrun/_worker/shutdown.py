"""Stopping a worker run in order, within ``shutdown_timeout`` whatever the handlers do.

1. Stop claiming; jobs claimed but not started go back to READY at once.
2. Running handlers get ``shutdown_grace`` to finish (none when the worker_id was
   refused: its claims are in no heartbeat).
3. Handlers still running are cancelled, and the jobs of those that stopped go back to
   READY. One that goes on (it catches CancelledError, or is a thread) keeps its job
   RUNNING; its outcome is written if it answers before the deadline, and its job goes
   back if it ends without an answer.
4. The last outcomes are written, heartbeats end, and the worker leaves the registry
   (unless a handler still runs: then its heartbeat goes stale and the reaper acts).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from pqrun.errors import DatabaseUnavailable, WorkerIdInUse

from .fetcher import DRAIN_WRITE_WAIT
from .loops import bounded
from .outcome import end_span
from .type_stats import LAST_FLUSH_WAIT

if TYPE_CHECKING:
    from .parts import WorkerParts
    from .runs import Run

logger = logging.getLogger("pqrun")


async def leave(parts: WorkerParts) -> None:
    """Take this worker out of the registry of live workers."""
    worker_id = parts.settings.worker_id
    try:
        await parts.store.leave(worker_id, instance=parts.instance)
    except Exception as exc:
        logger.info(
            "worker %s could not leave the registry (%s); the reaper removes it once "
            "its heartbeat is stale",
            worker_id,
            type(exc).__name__,
        )


async def shut_down(parts: WorkerParts, failure: Callable[[], BaseException | None]) -> None:
    """Steps 1 to 4 of the module docstring; the caller cancels what is left after.

    ``failure`` says what stopped the worker, read when the grace is decided: a
    WorkerIdInUse may come from a heartbeat during the first steps.
    """
    settings, registry = parts.settings, parts.registry
    worker_id = settings.worker_id
    timeout = settings.shutdown_timeout.total_seconds()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    # Time kept back from the grace period to put unfinished jobs back to READY.
    reserve = min(1.0, timeout / 4)

    def remaining() -> float:
        return max(0.0, deadline - loop.time())

    parts.request_stop()
    # Jobs claimed but not started go back first, so that other workers can take them
    # while this one finishes; a claim under way when the stop came adds to the buffer
    # once more, and those go back after the loops have ended.
    for attempt in range(2):
        if attempt == 1 and parts.background:
            await asyncio.wait(parts.background, timeout=min(remaining(), 5.0))
            for task in parts.background:
                task.cancel()  # a claim stuck on a dead connection: the reaper
        if registry.buffer:
            unstarted = registry.take_buffer()
            await bounded(
                parts.release(unstarted, "claimed but not started at shutdown"), remaining()
            )
    if registry.running:
        logger.info(
            "worker %s stopping: waiting up to %s for %d running jobs",
            worker_id,
            settings.shutdown_grace,
            len(registry.running),
        )
        grace = min(settings.shutdown_grace.total_seconds(), remaining() - reserve)
        if isinstance(failure(), WorkerIdInUse):
            # Its claims are in no heartbeat: the reaper may take them any time.
            grace = 0
        if grace > 0:
            await asyncio.wait(parts.slots, timeout=grace)
    # Handlers still running are cancelled, and the jobs of those that stopped are put
    # back at once. A handler that goes on (it catches CancelledError, or cleans up
    # slowly), like a plain function in a thread, which cannot be stopped, keeps its job
    # RUNNING: put back, the job would run elsewhere while this run goes on. Its outcome
    # is written if it returns before the deadline.
    interrupted = [run for run in registry.running if not run.is_thread]
    going_on: list[Run] = []
    for run in interrupted:
        run.release()  # whatever it answers now is not written
    if interrupted:
        await asyncio.wait(
            {run.task for run in interrupted}, timeout=max(remaining() - reserve / 2, 0.001)
        )
        going_on = [run for run in interrupted if run in registry.running]
        for run in going_on:
            run.keep()
        stopped = [run.job for run in interrupted if run not in registry.running]
        if stopped:
            await bounded(
                parts.release(
                    stopped, "interrupted: the worker shut down before the handler finished"
                ),
                remaining(),
            )
    if parts.slots and remaining() > 0:
        await asyncio.wait(parts.slots, timeout=remaining())
    if interrupted:
        # Handlers that went on but have ended since without an answer (they re-raised
        # the cancellation): their jobs go back now, not at the reaper.
        silent = [run.job for run in going_on if run.task.done() and not run.answered]
        if silent:
            await bounded(parts.release(silent, "interrupted: the worker shut down"), remaining())
    stuck = [run for run in registry.running if not run.task.done()]
    if stuck:
        logger.error(
            "worker %s: %d handlers did not end within shutdown_timeout (%s): jobs "
            "%s. A handler that catches CancelledError, or a plain function in a "
            "thread, keeps running; its job is left RUNNING, and goes back once this "
            "worker's heartbeat is stale",
            worker_id,
            len(stuck),
            settings.shutdown_timeout,
            [run.job.id for run in stuck],
        )
    unwritten = await close_writer(parts, remaining())
    if unwritten:
        logger.error(
            "worker %s: could not record the outcome of jobs %s before "
            "shutdown_timeout; they stay RUNNING until the reaper takes them back",
            worker_id,
            unwritten,
        )
    # Retries and snoozes written during the grace period: the others look then.
    await bounded(parts.listener.hand_over_rest(), remaining())
    # Every outcome is reported now: the counts per type of the last runs.
    await bounded(parts.type_stats.flush_last(), min(remaining(), LAST_FLUSH_WAIT))
    await parts.stop_heartbeats(remaining())
    if not registry.running:  # a handler still running keeps this worker registered
        await bounded(leave(parts), remaining())


def abandon(parts: WorkerParts) -> None:
    """Cancel whatever of the run is left (after ``shut_down``, or when it failed)."""
    parts.ended()
    for task in [*parts.background, *parts.slots]:
        task.cancel()
    parts.announcer.stop()


async def close_writer(parts: WorkerParts, within: float) -> list[int]:
    """Write the last outcomes for up to ``within`` seconds; the ids of jobs whose
    outcome could not be written (they stay RUNNING until the reaper takes them back)."""
    unwritten = await parts.writer.close(within=within)
    for outcome in unwritten:
        # Their trace spans end here, with what is known: nothing was recorded.
        end_span(outcome.span, None, "its outcome could not be recorded in time")
        outcome.span = None
    return [outcome.job.id for outcome in unwritten]


async def finish_drain(parts: WorkerParts, finished: bool) -> list[int]:
    """End a drain(): put back what it will not run and write the last outcomes.

    Returns the ids of jobs whose outcome could not be written.
    """
    registry = parts.registry
    parts.request_stop()
    parts.ended()
    if not finished:
        # An error or a cancellation: stop the handlers rather than wait for them.
        for run in registry.running:
            if not run.is_thread:
                run.release()
    released = [run.job for run in registry.running if run.released]
    unstarted = registry.take_buffer()
    if released or unstarted:
        await bounded(parts.release(released + unstarted, "drain() stopped early"), 5.0)
    await asyncio.wait(parts.slots, timeout=None if finished else 5.0)
    for slot in parts.slots:
        slot.cancel()  # any still running after the bounded wait
    # The database may be gone: a bounded wait for the last outcomes, and what cannot be
    # written stays RUNNING for the reaper.
    unwritten = await close_writer(parts, DRAIN_WRITE_WAIT)
    await bounded(parts.type_stats.flush_last(), LAST_FLUSH_WAIT)
    await parts.stop_heartbeats()
    parts.announcer.stop()
    return unwritten


def drain_unwritten(unwritten: list[int]) -> DatabaseUnavailable:
    return DatabaseUnavailable(
        f"drain() ran jobs {unwritten} but could not record their outcome within "
        f"{DRAIN_WRITE_WAIT:.0f} s; they stay RUNNING until the reaper takes them back"
    )
