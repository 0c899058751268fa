"""PGQueuer's rate with a producer enqueueing while it works, for docs/benchmarks.md.

Usage: python docs/bench/peer_pgqueuer_continuous.py DSN [--seconds 60] [--batch 100]

Measures PGQueuer the way `pqrun bench --mode continuous` measures pqrun: one producer
process enqueues batches of no-op jobs, keeping at most 50 batches ahead of the
consumers; PGQueuer runs with its own defaults (5 consumers as in its benchmark, batch
10). Prints jobs/s overall and per 10-second window. Needs `pip install pgqueuer`; it is
not a dependency of pqrun. Installs PGQueuer's schema into the database it is given.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

PGQ = str(Path(sys.executable).with_name("pgq"))


def produce(dsn: str, seconds: float, batch: int, completed: Any) -> None:
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.queries import Queries

    async def main() -> None:
        queries = Queries(AsyncpgDriver(await asyncpg.connect(dsn)))
        deadline = time.monotonic() + seconds
        produced = 0
        while time.monotonic() < deadline:
            if produced - completed.value >= batch * 50:
                await asyncio.sleep(0.001)
                continue
            await queries.enqueue(["noop"] * batch, [b""] * batch, [0] * batch)
            produced += batch

    asyncio.run(main())


def install(dsn: str) -> None:
    subprocess.run([PGQ, "--pg-dsn", dsn, "uninstall"], capture_output=True, check=False)
    subprocess.run([PGQ, "--pg-dsn", dsn, "install"], capture_output=True, check=True)


async def main(args: argparse.Namespace) -> None:
    from pgqueuer import PgQueuer
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.models import Job

    shared = multiprocessing.get_context("spawn").Value("q", 0, lock=False)
    finished: list[float] = []
    queuers = []
    for _ in range(args.consumers):
        queuer = PgQueuer(AsyncpgDriver(await asyncpg.connect(args.dsn)))

        @queuer.entrypoint("noop")
        async def noop(job: Job) -> None:
            finished.append(time.monotonic())
            shared.value += 1

        queuers.append(queuer)

    producer = multiprocessing.get_context("spawn").Process(
        target=produce, args=(args.dsn, args.seconds, args.batch, shared)
    )
    started = time.monotonic()
    producer.start()
    runs = [asyncio.create_task(q.run()) for q in queuers]
    await asyncio.to_thread(producer.join)
    elapsed = time.monotonic() - started
    for queuer in queuers:
        queuer.shutdown.set()
    await asyncio.wait(runs, timeout=10)
    windows = [
        round(sum(1 for t in finished if started + w * 10 <= t < started + (w + 1) * 10) / 10)
        for w in range(int(elapsed // 10))
    ]
    print(
        f"pgqueuer continuous: {len(finished)} jobs in {elapsed:.1f} s = "
        f"{len(finished) / elapsed:.0f} jobs/s; per 10 s window: {windows}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("dsn")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--consumers", type=int, default=5)
    arguments = parser.parse_args()
    install(arguments.dsn)
    asyncio.run(main(arguments))
