"""Logging on the `pqrun` logger: structured fields on per-job lines, silence when idle."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from pqrun import Fail, JobContext, PgJobStore, Retry, Worker

from .helpers import QUICK, wait_until

FIELDS = ("job_id", "job_type", "attempt", "duration_ms", "outcome")


def fields(record: logging.LogRecord) -> dict[str, Any]:
    return {name: getattr(record, name, "(missing)") for name in FIELDS}


async def test_per_job_lines_carry_job_id_type_attempt_duration_and_outcome(
    store: PgJobStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pqrun")

    async def ok(ctx: JobContext) -> None:
        pass

    async def again(ctx: JobContext) -> None:
        raise Retry(after=3600)

    async def broken(ctx: JobContext) -> None:
        raise Fail("bad input")

    ok_id = await store.enqueue("ok")
    again_id = await store.enqueue("again")
    broken_id = await store.enqueue("broken")
    await Worker(store, {"ok": ok, "again": again, "broken": broken}, **QUICK).drain()
    per_job = {r.job_id: r for r in caplog.records if hasattr(r, "job_id")}
    done, retried, failed = per_job[ok_id], per_job[again_id], per_job[broken_id]
    assert done.levelno == logging.DEBUG
    assert fields(done) == {
        "job_id": ok_id,
        "job_type": "ok",
        "attempt": 1,
        "duration_ms": done.duration_ms,  # type: ignore[attr-defined]
        "outcome": "DONE",
    }
    assert isinstance(done.duration_ms, int)  # type: ignore[attr-defined]
    assert retried.levelno == logging.WARNING
    assert fields(retried)["outcome"] == "READY"
    assert fields(retried)["job_type"] == "again"
    assert failed.levelno == logging.ERROR
    assert fields(failed)["outcome"] == "FAILED"
    assert "bad input" in failed.getMessage()


async def test_an_idle_worker_logs_nothing_per_poll(
    store: PgJobStore, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG, logger="pqrun")
    polls = 0
    claim = store.pickup_batch

    async def counted(*args: Any) -> Any:
        nonlocal polls
        polls += 1
        return await claim(*args)

    monkeypatch.setattr(store, "pickup_batch", counted)
    worker = Worker(store, {"t": lambda ctx: None}, listen=False, **QUICK)
    await worker.start()
    try:

        async def polled_enough() -> bool:
            return polls >= 20

        await wait_until(polled_enough)
    finally:
        await worker.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "pqrun"]
    assert len(lines) == 2, lines  # started, stopped
    assert "started" in lines[0]
    assert "stopped" in lines[1]


async def test_a_reaped_job_is_logged_with_its_fields(
    store: PgJobStore, caplog: pytest.LogCaptureFixture
) -> None:
    from datetime import timedelta

    caplog.set_level(logging.WARNING, logger="pqrun")
    job_id = await store.enqueue("slow")
    job = await store.pickup("gone-worker")
    assert job is not None
    await store.reap_stale(timedelta(0))
    (line,) = [r for r in caplog.records if getattr(r, "job_id", None) == job_id]
    assert fields(line) == {
        "job_id": job_id,
        "job_type": "slow",
        "attempt": 1,
        "duration_ms": "(missing)",
        "outcome": "reaped",
    }
