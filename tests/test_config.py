"""Worker settings from arguments and environment variables, and the timing policies."""

from __future__ import annotations

from datetime import timedelta

import pytest

from pqrun import BackoffPolicy, IdlePollPolicy, JobContext, LoopErrorPolicy, PgJobStore, Worker


async def noop(ctx: JobContext) -> None:
    return None


@pytest.fixture
def lazy_store() -> PgJobStore:
    return PgJobStore("postgresql://unused@127.0.0.1:1/none")  # never connected here


def test_defaults(lazy_store: PgJobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CONCURRENCY", "ENABLED", "REAPER_ENABLED", "REAP_INTERVAL", "STALE_TIMEOUT",
                 "SHUTDOWN_GRACE", "SHUTDOWN_TIMEOUT"):  # fmt: skip
        monkeypatch.delenv(f"WORKER_{name}", raising=False)
    worker = Worker(store=lazy_store, handlers={"t": noop})
    assert worker.concurrency == 1
    assert worker.enabled
    assert worker.enable_reaper
    # A third of the stale period: a dead worker's jobs are back within 40 s.
    assert worker.reap_interval == timedelta(seconds=10)
    assert worker.default_stale_after == timedelta(seconds=30)
    assert worker.heartbeat_interval == timedelta(seconds=5)
    assert worker.shutdown_grace == timedelta(seconds=20)
    assert worker.shutdown_timeout == timedelta(seconds=30)


def test_environment_configures_the_worker(
    lazy_store: PgJobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKER_ENABLED", "false")
    monkeypatch.setenv("WORKER_REAPER_ENABLED", "no")
    monkeypatch.setenv("WORKER_CONCURRENCY", "4")
    monkeypatch.setenv("WORKER_REAP_INTERVAL", "15")
    monkeypatch.setenv("WORKER_STALE_TIMEOUT", "90")
    monkeypatch.setenv("WORKER_SHUTDOWN_GRACE", "2.5")
    monkeypatch.setenv("WORKER_SHUTDOWN_TIMEOUT", "5")
    worker = Worker(store=lazy_store, handlers={"t": noop})
    assert not worker.enabled
    assert not worker.enable_reaper
    monkeypatch.delenv("WORKER_REAP_INTERVAL")
    assert Worker(store=lazy_store, handlers={"t": noop}).reap_interval == timedelta(seconds=30)
    assert worker.concurrency == 4
    assert worker.reap_interval == timedelta(seconds=15)
    assert worker.default_stale_after == timedelta(seconds=90)
    assert worker.shutdown_grace == timedelta(seconds=2.5)
    assert worker.shutdown_timeout == timedelta(seconds=5)


def test_arguments_win_over_environment(
    lazy_store: PgJobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKER_CONCURRENCY", "4")
    monkeypatch.setenv("WORKER_ENABLED", "false")
    worker = Worker(
        store=lazy_store,
        handlers={"t": noop},
        concurrency=2,
        enabled=True,
        shutdown_grace=timedelta(seconds=1),
        shutdown_timeout=3,
    )
    assert (worker.concurrency, worker.enabled) == (2, True)
    assert worker.shutdown_timeout == timedelta(seconds=3)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("WORKER_CONCURRENCY", "four", "WORKER_CONCURRENCY='four' is not a whole number"),
        ("WORKER_CONCURRENCY", "0", "WORKER_CONCURRENCY .* must be at least 1"),
        ("WORKER_ENABLED", "maybe", "WORKER_ENABLED='maybe' is not a boolean"),
        ("WORKER_STALE_TIMEOUT", "20m", "WORKER_STALE_TIMEOUT='20m' is not a number of seconds"),
        ("WORKER_REAP_INTERVAL", "0", "must be > 0"),
    ],
)
def test_bad_environment_values_are_named(
    lazy_store: PgJobStore, monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        Worker(store=lazy_store, handlers={"t": noop})


def test_worker_ids_are_unique_within_a_process(lazy_store: PgJobStore) -> None:
    first = Worker(store=lazy_store, handlers={"t": noop})
    second = Worker(store=lazy_store, handlers={"t": noop})
    assert first.worker_id != second.worker_id


def test_pool_is_sized_for_the_workers_concurrency(lazy_store: PgJobStore) -> None:
    Worker(store=lazy_store, handlers={"t": noop}, concurrency=32)
    assert lazy_store._connections_wanted == 32


def test_policy_schedules() -> None:
    assert [IdlePollPolicy().next_sleep(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert [LoopErrorPolicy().next_sleep(n) for n in range(1, 9)] == [
        0.5, 1, 2, 4, 8, 16, 30, 30,
    ]  # fmt: skip
    custom = BackoffPolicy(delays=[timedelta(seconds=5), timedelta(seconds=50)])
    assert [custom.retry_delay(n) for n in (1, 2, 3)] == [
        timedelta(seconds=5), timedelta(seconds=50), timedelta(seconds=50),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="base_seconds <= max_seconds"):
        IdlePollPolicy(base_seconds=5, max_seconds=1)
    with pytest.raises(ValueError, match="at least one delay"):
        BackoffPolicy(delays=[])
