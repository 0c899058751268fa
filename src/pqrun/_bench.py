"""``pqrun bench``: how fast pqrun runs on your database.

    pqrun bench                      # every mode, on $DATABASE_URL or a local PostgreSQL
    pqrun bench --mode drain --jobs 100000
    python -m pqrun._bench --mode latency

Each run works in a schema of its own (``pqrun_bench_*``) and drops it at the end. The
numbers compare well only with others taken on the same machine in the same run:
docs/benchmarks.md shows how, next to the raw-SQL floor and PGQueuer.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import secrets
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from ._localpg import find_or_start
from ._store.moves import PICKUP
from ._store.secrets import redact_dsn
from .handlers import JobContext
from .store import PgJobStore
from .worker import Worker

MODES = ("drain", "continuous", "latency", "bulk", "bigtable")


def rss_mb() -> float:
    """Resident memory of this process now, in MB (Linux); 0 where unknown."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Progress:
    """A one-line progress bar on stderr, shown only on a terminal."""

    def __init__(self, label: str, total: float) -> None:
        self.label = label
        self.total = total
        self.shown = sys.stderr.isatty()

    def update(self, done: float, note: str = "") -> None:
        if not self.shown:
            return
        width = 30
        filled = min(width, int(width * done / self.total)) if self.total else width
        bar = "#" * filled + "." * (width - filled)
        sys.stderr.write(f"\r  {self.label} [{bar}] {done:,.0f}/{self.total:,.0f} {note}   ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\r" + " " * 90 + "\r")
            sys.stderr.flush()


def _process_cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a process has used so far, from /proc; None if unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _backend_cpu(conn: asyncpg.Connection) -> dict[int, float]:
    """CPU seconds used so far by each backend of this database (readable on a local server)."""
    pids = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
    readings = {row["pid"]: _process_cpu_seconds(row["pid"]) for row in pids}
    return {pid: cpu for pid, cpu in readings.items() if cpu is not None}


def _server_cpu_between(before: dict[int, float], after: dict[int, float]) -> float | None:
    """Backend CPU used between two readings; a backend started in between counts whole."""
    if not after:
        return None
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


@asynccontextmanager
async def bench_schema(dsn: str) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """A fresh schema with pqrun's tables; yields (schema, server_settings) and drops it."""
    schema = f"pqrun_bench_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        settings = {"search_path": schema}
        setup = PgJobStore(dsn, server_settings=settings)
        await setup.setup()
        await setup.close()
        yield schema, settings
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


async def _fill(
    dsn: str,
    settings: dict[str, str],
    jobs: int,
    job_type: str = "noop",
    *,
    analyze: bool = True,
) -> None:
    conn = await asyncpg.connect(dsn, server_settings=settings)
    try:
        await conn.execute(
            "INSERT INTO jobs (job_type) SELECT $1 FROM generate_series(1, $2)", job_type, jobs
        )
        if analyze:
            await conn.execute("VACUUM ANALYZE jobs")
    finally:
        await conn.close()


async def bench_drain(
    dsn: str,
    jobs: int,
    concurrency: int | None,
    metrics: bool = False,
    sleep_ms: float = 0.0,
    new_queue: bool = False,
) -> dict[str, Any]:
    """Drain ``jobs`` queued no-op jobs with one worker at its default settings.

    ``metrics``: count them in Prometheus metrics too (a registry of its own).
    ``new_queue``: leave the filled table without statistics, as a new queue's first
    backlog is (else it is vacuumed and analyzed first).
    ``sleep_ms``: each handler awaits ``asyncio.sleep`` that long (an I/O-bound job); the
    ceiling is then concurrency / sleep jobs per second.
    """
    async with bench_schema(dsn) as (_, settings):
        await _fill(dsn, settings, jobs, analyze=not new_queue)
        done = 0
        progress = Progress("drain", jobs)

        async def noop(ctx: JobContext) -> None:
            nonlocal done
            if sleep_ms:
                await asyncio.sleep(sleep_ms / 1000)
            done += 1
            if done % 5000 == 0:
                progress.update(done)

        store = PgJobStore(dsn, server_settings=settings)
        if metrics:
            from prometheus_client import CollectorRegistry

            from .metrics import PrometheusMetrics, instrument

            instrument(store, PrometheusMetrics(CollectorRegistry()))
        worker = Worker(store=store, handlers={"noop": noop}, concurrency=concurrency)
        await store.start()
        peak = rss_mb()

        async def sample_memory() -> None:
            nonlocal peak
            while True:
                peak = max(peak, rss_mb())
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample_memory())
        observer = await asyncpg.connect(dsn, server_settings=settings)
        server_before = await _backend_cpu(observer)
        cpu_before = time.process_time()
        started = time.perf_counter()
        processed = await worker.drain()
        elapsed = time.perf_counter() - started
        client_cpu = time.process_time() - cpu_before
        server_cpu = _server_cpu_between(server_before, await _backend_cpu(observer))
        await observer.close()
        sampler.cancel()
        progress.close()
        await store.close()
        per_job = 1e6 / max(processed, 1)
        result: dict[str, Any] = {
            "jobs": processed,
            "seconds": round(elapsed, 2),
            "jobs_per_s": round(processed / elapsed),
            # The worker process's CPU (the memory sampler included) and its database
            # backends' (from /proc: only when the server runs on this machine).
            "client_cpu_us_per_job": round(client_cpu * per_job, 1),
            "server_cpu_us_per_job": (
                None if server_cpu is None else round(server_cpu * per_job, 1)
            ),
            "peak_rss_mb": round(max(peak, rss_mb()), 1),
        }
        if sleep_ms:
            ceiling = worker.concurrency / (sleep_ms / 1000)
            result["of_ceiling"] = round(processed / elapsed / ceiling, 3)
        return result


def _produce(
    dsn: str, settings: dict[str, str], seconds: float, batch: int, completed: Any
) -> None:
    """Producer process for continuous mode: enqueue batches until time is up.

    It keeps at most 50 batches queued ahead of the worker (``completed`` is the worker's
    shared count), so the queue stays short and the run measures the worker.
    """

    async def main() -> None:
        store = PgJobStore(dsn, server_settings=settings, max_size=2)
        deadline = time.monotonic() + seconds
        items = [{"job_type": "noop"}] * batch
        produced = 0
        while time.monotonic() < deadline:
            if produced - completed.value >= batch * 50:
                await asyncio.sleep(0.001)
                continue
            await store.enqueue_many(items)
            produced += batch
        await store.close()

    asyncio.run(main())


async def bench_continuous(
    dsn: str, seconds: float, batch: int, concurrency: int | None
) -> dict[str, Any]:
    """A producer process enqueues while one worker runs: the rate, per 10 s window."""
    async with bench_schema(dsn) as (_, settings):
        completed: list[float] = []
        shared = multiprocessing.get_context("spawn").Value("q", 0, lock=False)

        async def noop(ctx: JobContext) -> None:
            completed.append(time.monotonic())
            shared.value += 1

        store = PgJobStore(dsn, server_settings=settings)
        worker = Worker(store=store, handlers={"noop": noop}, concurrency=concurrency)
        await worker.start()
        producer = multiprocessing.get_context("spawn").Process(
            target=_produce, args=(dsn, settings, seconds, batch, shared)
        )
        started = time.monotonic()
        producer.start()
        progress = Progress("continuous", seconds)
        while producer.is_alive():
            await asyncio.sleep(0.5)
            elapsed = time.monotonic() - started
            progress.update(elapsed, f"{len(completed) / max(elapsed, 1e-9):,.0f} jobs/s")
        progress.close()
        elapsed = time.monotonic() - started
        await worker.stop()
        if producer.exitcode != 0:
            raise RuntimeError(f"the producer process failed (exit code {producer.exitcode})")
        windows = [
            sum(1 for t in completed if started + w * 10 <= t < started + (w + 1) * 10) / 10
            for w in range(int(elapsed // 10))
        ]
        conn = await asyncpg.connect(dsn, server_settings=settings)
        stats = await conn.fetchrow(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
            "WHERE relid = 'jobs'::regclass"
        )
        autovacuum = await conn.fetchval("SHOW autovacuum")
        await conn.close()
        await store.close()
        result: dict[str, Any] = {
            "seconds": round(elapsed, 1),
            "jobs": len(completed),
            "jobs_per_s": round(len(completed) / elapsed),
            "per_10s_window": [round(w) for w in windows],
            "updates": stats["n_tup_upd"] if stats else None,
            "hot_updates": stats["n_tup_hot_upd"] if stats else None,
            # Without autovacuum nothing clears the dead rows every job leaves, and the
            # rate falls as they pile up: see docs/operations.md.
            "server_autovacuum": autovacuum,
        }
        if len(windows) >= 2 and windows[0]:
            result["last_over_first_window"] = round(windows[-1] / windows[0], 2)
        return result


async def bench_latency(dsn: str, samples: int) -> dict[str, Any]:
    """Enqueue-commit to handler-start, one job at a time, to an idle worker."""
    async with bench_schema(dsn) as (_, settings):
        started: dict[int, float] = {}
        seen = asyncio.Event()

        async def handler(ctx: JobContext) -> None:
            started[ctx.job.id] = time.perf_counter()
            seen.set()

        store = PgJobStore(dsn, server_settings=settings)
        worker = Worker(store=store, handlers={"probe": handler}, enable_reaper=False)
        await worker.start()
        producer = PgJobStore(dsn, server_settings=settings, max_size=1)
        raw = await asyncpg.connect(dsn, server_settings=settings)
        results: dict[str, list[float]] = {"enqueue()": [], "SQL INSERT": []}
        progress = Progress("latency", samples * 2)
        await asyncio.sleep(0.5)  # let the worker go idle and LISTEN
        for n in range(samples * 2):
            seen.clear()
            via = "enqueue()" if n % 2 == 0 else "SQL INSERT"
            if via == "enqueue()":
                job_id = await producer.enqueue("probe")
            else:
                job_id = await raw.fetchval(
                    "INSERT INTO jobs (job_type) VALUES ('probe') RETURNING id"
                )
            committed = time.perf_counter()
            await asyncio.wait_for(seen.wait(), timeout=30)
            results[via].append((started[job_id] - committed) * 1000)
            progress.update(n + 1)
            await asyncio.sleep(0.02)  # idle again before the next one
        progress.close()
        await worker.stop()
        await raw.close()
        await producer.close()
        await store.close()
        return {
            via: {
                "p50_ms": round(statistics.median(ms), 2),
                "p95_ms": round(percentile(ms, 0.95), 2),
                "p99_ms": round(percentile(ms, 0.99), 2),
            }
            for via, ms in results.items()
        }


async def bench_bulk(dsn: str, jobs: int, rounds: int) -> dict[str, Any]:
    """enqueue_many of ``jobs`` jobs per call, ``rounds`` times."""
    async with bench_schema(dsn) as (_, settings):
        store = PgJobStore(dsn, server_settings=settings)
        await store.start()
        items = [{"job_type": "bulk", "payload": {"n": n}} for n in range(jobs)]
        timings = []
        for _ in range(rounds):
            began = time.perf_counter()
            await store.enqueue_many(items)
            timings.append(time.perf_counter() - began)
        await store.close()
        best = min(timings)
        return {
            "jobs_per_call": jobs,
            "median_s": round(statistics.median(timings), 3),
            "jobs_per_s": round(jobs / statistics.median(timings)),
            "best_jobs_per_s": round(jobs / best),
        }


async def _claim_cost(dsn: str, settings: dict[str, str], claims: int) -> tuple[float, str]:
    """Median ms of a 100-job claim (each rolled back, so every claim sees the same table)."""
    conn = await asyncpg.connect(
        dsn, server_settings={**settings, "plan_cache_mode": "force_custom_plan"}
    )
    try:
        timings = []
        for _ in range(claims):
            tx = conn.transaction()
            await tx.start()
            began = time.perf_counter()
            await conn.fetch(PICKUP, "bench", ["noop"], 100, False)
            timings.append((time.perf_counter() - began) * 1000)
            await tx.rollback()
        tx = conn.transaction()
        await tx.start()
        plan = await conn.fetch(
            "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + PICKUP, "bench", ["noop"], 100, False
        )
        await tx.rollback()
        return statistics.median(timings), "\n".join(row[0] for row in plan)
    finally:
        await conn.close()


async def bench_bigtable(dsn: str, done_rows: int, future_rows: int) -> dict[str, Any]:
    """Claim cost with only due jobs, then with many finished and not-yet-due rows added."""
    async with bench_schema(dsn) as (_, settings):
        await _fill(dsn, settings, 10_000)
        small_ms, _ = await _claim_cost(dsn, settings, 200)
        conn = await asyncpg.connect(dsn, server_settings=settings)
        await conn.execute(
            "INSERT INTO jobs (job_type, status, finished_at, result) "
            "SELECT 'noop', 'DONE', now(), 'null' FROM generate_series(1, $1)",
            done_rows,
        )
        await conn.execute(
            "INSERT INTO jobs (job_type, run_after) "
            "SELECT 'noop', now() + interval '1 day' FROM generate_series(1, $1)",
            future_rows,
        )
        await conn.execute("VACUUM ANALYZE jobs")
        await conn.close()
        big_ms, plan = await _claim_cost(dsn, settings, 200)
        return {
            "claim_100_ms_due_only": round(small_ms, 3),
            "claim_100_ms_big_table": round(big_ms, 3),
            "ratio": round(big_ms / small_ms, 2),
            "rows": f"10k due + {done_rows:,} DONE + {future_rows:,} not yet due",
            "plan": plan,
        }


def _print(mode: str, result: dict[str, Any], say: Callable[[str], None]) -> None:
    say(f"{mode}:")
    for key, value in result.items():
        if key == "plan":
            say("  plan:\n    " + str(value).replace("\n", "\n    "))
        elif isinstance(value, dict):
            say(f"  {key}: " + ", ".join(f"{k} {v}" for k, v in value.items()))
        else:
            say(f"  {key}: {value}")


async def run(args: argparse.Namespace, say: Callable[[str], None] = print) -> dict[str, Any]:
    if args.dsn:
        dsn, how, server = args.dsn, "--dsn", None
    else:
        dsn, how, server = await find_or_start()
    say(f"pqrun bench on {how} ({redact_dsn(dsn)}), {os.cpu_count()} CPUs")
    modes = MODES if args.mode == "all" else (args.mode,)
    results: dict[str, Any] = {}
    try:
        for mode in modes:
            if mode == "drain":
                result = await bench_drain(
                    dsn, args.jobs, args.concurrency, args.metrics, args.sleep_ms, args.new_queue
                )
            elif mode == "continuous":
                result = await bench_continuous(dsn, args.seconds, args.batch, args.concurrency)
            elif mode == "latency":
                result = await bench_latency(dsn, args.samples)
            elif mode == "bulk":
                result = await bench_bulk(dsn, 10_000, 5)
            else:
                result = await bench_bigtable(dsn, args.done_rows, args.future_rows)
            results[mode] = result
            _print(mode, result, say)
    finally:
        if server is not None:
            await asyncio.to_thread(server.destroy)
    return results


def parser(prog: str = "pqrun bench") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Measure pqrun on a PostgreSQL.")
    p.add_argument("--dsn", help="database to measure on (default: $DATABASE_URL or local)")
    p.add_argument(
        "--mode", choices=(*MODES, "all"), default="all", help="what to measure (all of it)"
    )
    p.add_argument("--jobs", type=int, default=20_000, help="drain: jobs queued first")
    p.add_argument("--concurrency", type=int, help="worker concurrency (default: its own)")
    p.add_argument(
        "--metrics", action="store_true", help="drain: count jobs in Prometheus metrics too"
    )
    p.add_argument(
        "--sleep-ms", type=float, default=0.0, help="drain: each handler sleeps this long"
    )
    p.add_argument(
        "--new-queue",
        action="store_true",
        help="drain: the queued jobs' table is not analyzed first (a new queue's backlog)",
    )
    p.add_argument("--seconds", type=float, default=30.0, help="continuous: run time")
    p.add_argument("--batch", type=int, default=100, help="continuous: jobs per enqueue")
    p.add_argument("--samples", type=int, default=200, help="latency: jobs per enqueue path")
    p.add_argument("--done-rows", type=int, default=1_000_000, help="bigtable: DONE rows")
    p.add_argument("--future-rows", type=int, default=100_000, help="bigtable: future rows")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser("python -m pqrun._bench").parse_args(argv)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
