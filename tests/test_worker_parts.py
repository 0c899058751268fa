"""The parts of a worker: named tasks, and the states of one run (pqrun._worker)."""

from __future__ import annotations

import asyncio
import json
from typing import cast

import asyncpg
import pytest

from pqrun import JobContext, PgJobStore, Worker
from pqrun._worker.executor import LoopTurns
from pqrun._worker.loops import Lifetime, OutageLog
from pqrun._worker.outcome import Outcome
from pqrun._worker.outcome_writer import OutcomeWriter
from pqrun._worker.runs import Run, RunState
from pqrun.models import Job
from pqrun.policies import LoopErrorPolicy
from pqrun.testing import make_job

from .helpers import QUICK_POLICIES


async def noop(ctx: JobContext) -> None:
    return None


async def test_every_task_of_a_worker_is_named_after_it_and_its_part(store: PgJobStore) -> None:
    worker = Worker(store, {"t": noop}, worker_id="w-named", concurrency=2, **QUICK_POLICIES)
    await worker.start()
    try:
        names = {task.get_name() for task in asyncio.all_tasks()}
    finally:
        await worker.stop()
    parts = {"fetcher", "slot-0", "slot-1", "outcome-writer", "liveness", "listener"}
    parts |= {"reaper", "pruner"}
    assert {f"pqrun:w-named:{part}" for part in parts} <= names


async def test_a_run_released_at_shutdown_goes_back_to_where_it_was_if_it_goes_on() -> None:
    async def forever() -> None:
        await asyncio.sleep(3600)

    task = asyncio.ensure_future(forever())
    try:
        run = Run(cast(Job, None), task)  # the job itself plays no part here
        assert state_of(run) is RunState.RUNNING
        assert run.request_cancel()  # the claim is lost
        assert not run.request_cancel()  # said once
        assert state_of(run) is RunState.CANCEL_REQUESTED
        run.release()
        assert run.released
        assert run.request_cancel() is False
        assert run.released
        run.keep()  # the handler went on: it is still the cancelled run it was
        assert state_of(run) is RunState.CANCEL_REQUESTED
        assert run.claim_lost
        run.answer()
        assert run.answered
    finally:
        task.cancel()


def state_of(run: Run) -> RunState:
    """The run's state now (a call, so that the type checker does not pin it)."""
    return run.state


async def test_a_repeated_step_logs_one_outage_backs_off_and_ends_when_told(
    caplog: pytest.LogCaptureFixture,
) -> None:
    life = Lifetime("w-repeat", OutageLog("w-repeat"), LoopErrorPolicy(0.01, 0.01))
    answers: list[float | Exception | None] = [
        ConnectionError("down"),
        ConnectionError("still down"),
        0.01,
        None,  # ends the loop
        0.01,  # never asked for
    ]
    asked = 0

    async def step() -> float | None:
        nonlocal asked
        answer = answers[asked]
        asked += 1
        if isinstance(answer, Exception):
            raise answer
        return answer

    await asyncio.wait_for(life.repeat("probe", "probing", step), 30)
    assert asked == 4
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "probing" in m]) == 1  # one line for the outage
    assert len([m for m in messages if "database works again" in m]) == 1


async def test_a_repeated_step_stops_when_the_worker_stops() -> None:
    life = Lifetime("w-stop", OutageLog("w-stop"), LoopErrorPolicy())

    async def step() -> float:
        return 3600.0

    loop = asyncio.ensure_future(life.repeat("idle", "idling", step))
    await asyncio.sleep(0)
    life.stopping.set()
    await asyncio.wait_for(loop, 30)


async def test_closing_the_writer_wakes_an_answer_waiting_for_room_and_names_it(
    store: PgJobStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("pqrun._worker.outcome_writer.MAX_PENDING", 1)
    life = Lifetime("w-close", OutageLog("w-close"), LoopErrorPolicy())
    writer = OutcomeWriter(store, life.streak("writer"), on_written=lambda *_: None)
    # Never started: the first answer fills it, the second waits for room.
    await writer.submit(Outcome(job=make_job(job_id=1), duration_ms=0, result_json="1"))
    waiting = asyncio.ensure_future(
        writer.submit(Outcome(job=make_job(job_id=2), duration_ms=0, result_json="2"))
    )
    await asyncio.sleep(0.01)
    assert not waiting.done()
    unwritten = await writer.close(0)
    assert [o.job.id for o in unwritten] == [1]
    await asyncio.wait_for(waiting, 30)  # woken, not left waiting forever
    assert any(
        "job 2" in r.getMessage() and "answered after the worker shut down" in r.getMessage()
        for r in caplog.records
    )


async def test_slots_wait_for_room_when_the_writer_is_full_and_every_outcome_is_written(
    store: PgJobStore, conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Slots wait for the writer's room when it has none: nothing is lost.
    monkeypatch.setattr("pqrun._worker.outcome_writer.MAX_PENDING", 2)

    async def quick(ctx: JobContext) -> int:
        return int(ctx.job.id)

    await store.enqueue_many([{"job_type": "quick"}] * 200)
    processed = await Worker(store, {"quick": quick}, concurrency=8, **QUICK_POLICIES).drain()
    assert processed == 200
    rows = await conn.fetch("SELECT id, status, result FROM jobs")
    assert {r["status"] for r in rows} == {"DONE"}
    assert all(json.loads(r["result"]) == r["id"] for r in rows)


async def test_handlers_that_never_wait_still_let_other_tasks_run(store: PgJobStore) -> None:
    done = 0

    async def busy(ctx: JobContext) -> None:
        nonlocal done
        done += 1  # never awaits: only the slot's own yield lets others in

    await store.enqueue_many([{"job_type": "busy"}] * 3000)
    seen: set[int] = set()
    draining = True

    async def watch() -> None:
        while draining:
            seen.add(done)
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    try:
        await Worker(store, {"busy": busy}, concurrency=1, **QUICK_POLICIES).drain()
    finally:
        draining = False
        await watcher
    assert done == 3000
    # Yielding about once a millisecond, the watcher sees the count grow in many steps.
    assert len(seen) >= 10, sorted(seen)


async def test_a_slot_whose_handler_waited_starts_its_next_job_without_another_turn(
    store: PgJobStore,
) -> None:
    turns = LoopTurns()
    ended_at: int | None = None
    turn_between: list[bool] = []

    async def waits(ctx: JobContext) -> None:
        nonlocal ended_at
        if ended_at is not None:
            turn_between.append(turns.count != ended_at)
        await asyncio.sleep(0.002)  # longer than the slot's yield period
        ended_at = turns.mark()

    await store.enqueue_many([{"job_type": "waits"}] * 100)
    await Worker(store, {"waits": waits}, concurrency=1, **QUICK_POLICIES).drain()
    assert len(turn_between) == 99
    # The loop turns between two jobs only when the slot hands a claim to the fetcher
    # (the buffer ran low), not after every job that waited.
    assert sum(turn_between) < 50, turn_between
