"""Many workers on one database, through PgBouncer: what issue 14 asks to see.

For each worker count (default 1, 4, 32), worker processes of ``--slots`` slots each run
no-op jobs through a throwaway PgBouncer in transaction mode with ``--server-conns``
server connections (tests/pgbouncer.py), LISTENing on a direct connection
(``PgJobStore(pooler=True, direct_dsn=...)``), while a producer process enqueues
``--jobs`` jobs in batches of 100. Then, with every worker idle, ``--singles`` jobs are
enqueued one at a time, and the claims they cause are counted.

Reported per worker count: whether every job ended DONE after exactly one run (attempts
= 1, none FAILED), the drain rate from the first enqueue to the last completion, the most
connections the database had (through the bouncer and direct), and the claims per single
job (how many workers one notification wakes).

    python scripts/scale.py [--dsn postgresql://postgres@127.0.0.1/postgres]
                            [--workers 1,4,32] [--jobs 50000] [--slots 4]
                            [--server-conns 20] [--singles 200] [--json report.json]

Not part of the test suite: it takes minutes and measures, where tests assert.
"""

# A measuring script: its short blocking calls (files, starting processes) are on purpose.
# ruff: noqa: ASYNC220, ASYNC240

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from pqrun import IdlePollPolicy, JobContext, PgJobStore, Worker, ddl_sql  # noqa: E402
from tests.pgbouncer import PgBouncer  # noqa: E402


def with_database(dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


# -- a worker process ----------------------------------------------------------------


async def run_worker(pooled: str, direct: str, slots: int, stats_path: str) -> None:
    """Run until SIGTERM; then write how many claims this worker made, and how many found
    nothing, to ``stats_path``."""
    claims = {"claims": 0, "empty": 0}

    class CountingStore(PgJobStore):
        async def pickup_batch(self, worker_id: str, job_types: Any, limit: int) -> Any:
            jobs = await super().pickup_batch(worker_id, job_types, limit)
            claims["claims"] += 1
            claims["empty"] += not jobs
            return jobs

    async def noop(ctx: JobContext) -> None:
        return None

    store = CountingStore(pooled, pooler=True, direct_dsn=direct)
    # An idle worker looks every 10 s: what it claims sooner, a notification woke it for.
    worker = Worker(
        store,
        {"noop": noop},
        concurrency=slots,
        idle_policy=IdlePollPolicy(10, 10),
        enable_vacuum=False,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(
        signal.SIGUSR1, lambda: Path(stats_path + ".mark").write_text(json.dumps(claims))
    )
    async with worker.lifespan(None):
        Path(stats_path + ".ready").write_text("ready")
        await stop.wait()
    Path(stats_path).write_text(json.dumps(claims))


async def run_producer(pooled: str, jobs: int) -> None:
    store = PgJobStore(pooled, pooler=True, max_size=2)
    items = [{"job_type": "noop"}] * 100
    for _ in range(jobs // 100):
        await store.enqueue_many(items)
    await store.close()


# -- the parent ----------------------------------------------------------------------


async def claims_of(stats: list[Path], suffix: str = "") -> tuple[int, int]:
    total = empty = 0
    for path in (Path(f"{p}{suffix}") for p in stats):
        counted = json.loads(path.read_text())
        total += counted["claims"]
        empty += counted["empty"]
    return total, empty


async def wait_for(predicate: Any, within: float, every: float = 0.05) -> None:
    deadline = time.monotonic() + within
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the run did not finish in time")
        await asyncio.sleep(every)


async def one_run(args: argparse.Namespace, bouncer: PgBouncer, workers: int) -> dict[str, Any]:
    database = f"pqrun_scale_{os.getpid()}_{workers}"
    admin = await asyncpg.connect(args.dsn)
    await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{database}"')
    direct = with_database(args.dsn, database)
    user = urlsplit(args.dsn).username or "postgres"
    pooled = bouncer.dsn(database, user=user)
    conn = await asyncpg.connect(direct)
    await conn.execute(ddl_sql())
    tmp = Path(f"/tmp/pqrun_scale_{os.getpid()}_{workers}")
    tmp.mkdir(exist_ok=True)
    stats = [tmp / f"worker{n}.json" for n in range(workers)]
    for path in [*stats, *(Path(f"{p}.ready") for p in stats)]:
        path.unlink(missing_ok=True)
    me = [sys.executable, __file__]
    procs = [
        subprocess.Popen([*me, "--role", "worker", pooled, direct, str(args.slots), str(path)])
        for path in stats
    ]
    peak = 0

    async def connections() -> int:
        nonlocal peak
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", database
        )
        peak = max(peak, count)
        return count

    try:

        async def all_ready() -> bool:
            return all(Path(f"{p}.ready").exists() for p in stats)

        await wait_for(all_ready, 300)
        start = time.monotonic()
        producer = subprocess.Popen([*me, "--role", "producer", pooled, str(args.jobs)])

        async def drained() -> bool:
            await connections()
            done: int = await conn.fetchval("SELECT count(*) FROM jobs WHERE status = 'DONE'")
            return done >= args.jobs

        await wait_for(drained, 1800, every=0.2)
        elapsed = time.monotonic() - start
        producer.wait(60)
        drain_claims = await _mark(procs, stats)
        # Every worker idle now: one job at a time, and the claims each one causes.
        before = await conn.fetchval("SELECT count(*) FROM jobs")
        singles_start = time.monotonic()
        for _ in range(args.singles):
            await conn.execute("INSERT INTO jobs (job_type) VALUES ('noop')")
            await asyncio.sleep(0.05)

        async def singles_done() -> bool:
            done: int = await conn.fetchval("SELECT count(*) FROM jobs WHERE status = 'DONE'")
            return done >= before + args.singles

        await wait_for(singles_done, 120)
        singles_seconds = time.monotonic() - singles_start
        final_claims = await _signal_and_collect(procs, stats)
        runs = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE status = 'DONE' AND attempts = 1) AS once,"
            " count(*) FILTER (WHERE status <> 'DONE' OR attempts <> 1) AS other FROM jobs"
        )
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        await conn.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()
    singles_claims = final_claims[0] - drain_claims[0]
    singles_empty = final_claims[1] - drain_claims[1]
    return {
        "workers": workers,
        "slots": args.slots,
        "jobs": args.jobs,
        "done_once": runs["once"],
        "not_done_once": runs["other"],
        "jobs_per_s": round(args.jobs / elapsed),
        "peak_connections": peak,
        "drain_claims": drain_claims[0],
        "drain_claims_empty": drain_claims[1],
        "singles": args.singles,
        "singles_seconds": round(singles_seconds, 1),
        "claims_per_single": round(singles_claims / max(args.singles, 1), 2),
        "empty_claims_per_single": round(singles_empty / max(args.singles, 1), 2),
    }


async def _mark(procs: list[subprocess.Popen[bytes]], stats: list[Path]) -> Any:
    for path in stats:
        Path(f"{path}.mark").unlink(missing_ok=True)
    for proc in procs:
        proc.send_signal(signal.SIGUSR1)

    async def marked() -> bool:
        return all(Path(f"{p}.mark").exists() for p in stats)

    await wait_for(marked, 60)
    await asyncio.sleep(0.2)  # a file being written
    return await claims_of(stats, ".mark")


async def _signal_and_collect(procs: list[subprocess.Popen[bytes]], stats: list[Path]) -> Any:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait(120)
    return await claims_of(stats)


async def main(args: argparse.Namespace) -> int:
    parts = urlsplit(args.dsn)
    report = []
    with PgBouncer(
        parts.hostname or "127.0.0.1",
        parts.port or 5432,
        users=(parts.username or "postgres",),
        default_pool_size=args.server_conns,
        max_client_conn=4000,
    ) as bouncer:
        for workers in args.workers:
            # Claims made while draining and while idle are counted apart: a run with
            # --singles 0 gives the drain's own claims.
            result = await one_run(args, bouncer, workers)
            print(json.dumps(result), flush=True)
            report.append(result)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    ok = all(r["done_once"] == r["jobs"] + r["singles"] and not r["not_done_once"] for r in report)
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--role":
        role, rest = sys.argv[2], sys.argv[3:]
        if role == "worker":
            asyncio.run(run_worker(rest[0], rest[1], int(rest[2]), rest[3]))
        else:
            asyncio.run(run_producer(rest[0], int(rest[1])))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1/postgres")
    parser.add_argument(
        "--workers", type=lambda s: [int(n) for n in s.split(",")], default=[1, 4, 32]
    )
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--server-conns", type=int, default=20)
    parser.add_argument("--singles", type=int, default=200)
    parser.add_argument("--json")
    sys.exit(asyncio.run(main(parser.parse_args())))
