"""Chaos run: what "done" means for pqrun (issue 11).

10,000 jobs, 4 worker processes of 8 slots each; every 2 s one worker, picked at random,
is SIGKILLed and started again; once, in the middle of the run (when half the jobs are
DONE), the private PostgreSQL is stopped and started again. Workers run with pqrun's
defaults (no default_stale_after, no reap interval): the defaults are what is measured.

Every handler run writes a start record and an end record in ``chaos_runs`` on a plain
asyncpg connection of its worker process (not the store's pool). Afterwards:

- a run without an end record ends when its process ended: the time the parent sent it
  SIGKILL (or saw it exit by itself, or killed it at teardown);
- two runs of one job overlap if each started before the other ended;
- recovery is the time from the last kill to the last job done; it must not exceed twice
  the default stale period;
- a job whose run a kill cut off must start again within twice the stale period of the
  kill (the kills go on meanwhile);
- every job must be finished before the deadline stops the kills: jobs that only finish
  once the kills stop were not recovered under them.

Exit status 0 when every job is DONE, none FAILED, no two runs overlap and every time
above fits; 1 otherwise; 2 when the run itself could not be carried out.

    python scripts/chaos.py [--jobs 10000] [--workers 4] [--concurrency 8]
                            [--kill-every 2] [--deadline 600] [--json report.json]

Not part of the test suite (tests/test_chaos.py is the short version that runs in CI).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from pqrun import JobContext, PgJobStore, Worker, ddl_sql
from pqrun._localpg import ThrowawayCluster

SCRIPT = Path(__file__).resolve()
JOB_TYPE = "chaos"
RECORD_TABLES = """
DROP TABLE IF EXISTS chaos_runs, chaos_exits;
CREATE TABLE chaos_runs (
    run_id      uuid PRIMARY KEY,
    job_id      bigint NOT NULL,
    lease_id    bigint,
    attempt     integer NOT NULL,
    worker      integer NOT NULL,  -- OS pid of the worker process
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    ended_at    timestamptz,
    ended_how   text               -- ok | cancelled | error
);
CREATE INDEX ON chaos_runs (job_id);
-- Written by the parent at the end: when each worker process ended, and how.
CREATE TABLE chaos_exits (
    worker      integer PRIMARY KEY,
    exited_at   timestamptz NOT NULL,
    how         text NOT NULL      -- kill | died | teardown
);
"""
# How long a handler keeps trying to write its start or end record through an outage.
RECORD_PATIENCE = 60.0


# -- the worker process ------------------------------------------------------------------


class RunLog:
    """One plain connection per worker process for the run records; reconnects as needed."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn: asyncpg.Connection | None = None
        self.lock = asyncio.Lock()

    async def execute(self, sql: str, *args: Any) -> None:
        """Run ``sql`` until it works; the statements are written to be safe to repeat
        (a write may have committed on a connection that broke before it answered)."""
        give_up = time.monotonic() + RECORD_PATIENCE
        while True:
            try:
                async with self.lock:
                    if self.conn is None or self.conn.is_closed():
                        self.conn = await asyncpg.connect(self.dsn, timeout=2)
                    await self.conn.execute(sql, *args, timeout=5)
                return
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                if self.conn is not None:
                    self.conn.terminate()
                    self.conn = None
                if time.monotonic() > give_up:
                    raise
                await asyncio.sleep(0.2)


async def worker_main(dsn: str, concurrency: int) -> None:
    runs = RunLog(dsn)
    pid = os.getpid()

    async def handler(ctx: JobContext) -> str:
        run_id = uuid.uuid4()
        # The run begins once its start is on record; if that cannot be written the
        # handler fails before doing anything, and the job is retried.
        await runs.execute(
            "INSERT INTO chaos_runs (run_id, job_id, lease_id, attempt, worker)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (run_id) DO NOTHING",
            run_id,
            ctx.job.id,
            ctx.job.lease_id,
            ctx.job.attempts,
            pid,
        )
        how = "error"
        try:
            await asyncio.sleep(random.uniform(0.02, 0.2))
            how = "ok"
        except asyncio.CancelledError:
            how = "cancelled"
            raise
        finally:
            # The handler has not returned until its end is on record, so a slow write
            # makes the run look longer, never shorter.
            await asyncio.shield(
                runs.execute(
                    "UPDATE chaos_runs SET ended_at = clock_timestamp(), ended_how = $2"
                    " WHERE run_id = $1 AND ended_at IS NULL",
                    run_id,
                    how,
                )
            )
        return "ok"

    async def orphaned() -> None:
        # Should the parent die without killing us, do not run on for ever.
        parent = os.getppid()
        while os.getppid() == parent:  # noqa: ASYNC110 (no event tells of it)
            await asyncio.sleep(1)
        os._exit(3)

    watchdog = asyncio.create_task(orphaned())
    store = PgJobStore(dsn)
    worker = Worker(store=store, handlers={JOB_TYPE: handler}, concurrency=concurrency)
    try:
        await worker.run()
    finally:
        watchdog.cancel()


# -- the parent --------------------------------------------------------------------------


@dataclass
class Children:
    dsn: str
    concurrency: int
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    # pid -> (wall-clock time it ended, how: kill | died | teardown)
    exits: dict[int, tuple[datetime, str]] = field(default_factory=dict)
    kill_times: list[datetime] = field(default_factory=list)
    kills_stopped: dict[str, Any] = field(default_factory=dict)
    started = 0

    def start_one(self) -> subprocess.Popen[bytes]:
        # The workers get no WORKER_* settings from this environment: defaults only.
        env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
        proc = subprocess.Popen(
            [
                sys.executable,
                str(SCRIPT),
                "--worker",
                self.dsn,
                "--concurrency",
                str(self.concurrency),
            ],
            env={**env, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.started += 1
        return proc

    def start(self, count: int) -> None:
        self.procs = [self.start_one() for _ in range(count)]

    def kill_random(self) -> None:
        index = random.randrange(len(self.procs))
        proc = self.procs[index]
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            now = datetime.now(UTC)
            proc.wait()
            self.exits[proc.pid] = (now, "kill")
            self.kill_times.append(now)
        self.procs[index] = self.start_one()

    def replace_dead(self) -> int:
        """Start again any worker that ended by itself; how many did."""
        died = 0
        for index, proc in enumerate(self.procs):
            if proc.poll() is not None and proc.pid not in self.exits:
                self.exits[proc.pid] = (datetime.now(UTC), "died")
                self.procs[index] = self.start_one()
                died += 1
        return died

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
                self.exits.setdefault(proc.pid, (datetime.now(UTC), "teardown"))
            else:
                self.exits.setdefault(proc.pid, (datetime.now(UTC), "died"))


async def unfinished(dsn: str) -> int | None:
    """Jobs not yet DONE, FAILED or CANCELLED; None while the database is out of reach."""
    try:
        conn = await asyncpg.connect(dsn, timeout=2)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return None
    try:
        left = await conn.fetchval(
            "SELECT count(*) FROM jobs WHERE status NOT IN ('DONE', 'FAILED', 'CANCELLED')",
            timeout=10,
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return None
    finally:
        conn.terminate()
    return int(left)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def nothing(ctx: JobContext) -> None:
    """A handler for the Worker built only to read its default stale period."""


async def run(
    args: argparse.Namespace, cluster: ThrowawayCluster, children: Children
) -> dict[str, Any]:
    dsn = cluster.dsn
    stale = Worker(PgJobStore(dsn), {JOB_TYPE: nothing}).default_stale_after
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(ddl_sql())
        await conn.execute(RECORD_TABLES)
    finally:
        await conn.close()
    async with PgJobStore(dsn) as store:
        for first in range(0, args.jobs, 1000):
            await store.enqueue_many([{"job_type": JOB_TYPE}] * min(1000, args.jobs - first))
    log(f"{args.jobs} jobs enqueued; stale period {stale.total_seconds():.0f} s")

    began = time.monotonic()
    children.start(args.workers)
    restart: dict[str, Any] | None = None
    restart_task: asyncio.Task[None] | None = None
    unexpected_exits = 0
    left = args.jobs

    async def restart_postgres() -> None:
        nonlocal restart
        at = datetime.now(UTC)
        t0 = time.monotonic()
        await asyncio.to_thread(cluster.stop)
        await asyncio.to_thread(cluster.start)
        restart = {"at": at.isoformat(), "seconds_down": round(time.monotonic() - t0, 2)}
        log(f"PostgreSQL restarted ({restart['seconds_down']} s down)")

    while time.monotonic() - began < args.deadline:
        await asyncio.sleep(args.kill_every)
        unexpected_exits += children.replace_dead()
        counts = await unfinished(dsn)
        if counts is not None:
            left = counts
            if left == 0:
                break
        elapsed = time.monotonic() - began
        if restart_task is None and (left <= args.jobs // 2 or elapsed >= args.deadline / 2):
            restart_task = asyncio.create_task(restart_postgres())
        children.kill_random()
        if len(children.kill_times) % 10 == 0:
            log(f"{elapsed:.0f} s: {len(children.kill_times)} kills, {left} jobs unfinished")
    kills_stopped = time.monotonic()
    children.kills_stopped = {
        "after_seconds": round(kills_stopped - began, 1),
        "because": "every job finished" if left == 0 else "deadline",
        "jobs_unfinished": left,
    }
    log(f"kills stopped after {kills_stopped - began:.0f} s: {left} jobs unfinished")
    if restart_task is not None:
        await restart_task
    # Now without kills: wait for the rest, up to --recovery-wait.
    while left > 0 and time.monotonic() - kills_stopped < args.recovery_wait:
        await asyncio.sleep(0.5)
        unexpected_exits += children.replace_dead()
        counts = await unfinished(dsn)
        if counts is not None:
            left = counts
    elapsed = time.monotonic() - began
    children.kill_all()
    log(f"workers stopped after {elapsed:.0f} s: {left} jobs unfinished")
    return await measure(args, dsn, children, stale, restart, unexpected_exits, elapsed)


async def measure(
    args: argparse.Namespace,
    dsn: str,
    children: Children,
    stale: timedelta,
    restart: dict[str, Any] | None,
    unexpected_exits: int,
    elapsed: float,
) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.executemany(
            "INSERT INTO chaos_exits (worker, exited_at, how) VALUES ($1, $2, $3)",
            [(pid, at, how) for pid, (at, how) in children.exits.items()],
        )
        await conn.execute(
            "CREATE TEMP VIEW runs AS SELECT r.*, e.how AS process_end,"
            " COALESCE(r.ended_at, e.exited_at) AS effective_end"
            " FROM chaos_runs r LEFT JOIN chaos_exits e ON e.worker = r.worker"
        )
        statuses = {
            row["status"]: row["n"]
            for row in await conn.fetch("SELECT status, count(*) AS n FROM jobs GROUP BY 1")
        }
        runs = await conn.fetchrow(
            "SELECT count(*) AS total,"
            " count(*) FILTER (WHERE ended_how = 'ok') AS ok,"
            " count(*) FILTER (WHERE ended_how = 'cancelled') AS cancelled,"
            " count(*) FILTER (WHERE ended_how = 'error') AS error,"
            " count(*) FILTER (WHERE ended_at IS NULL AND process_end = 'kill') AS cut_by_kill,"
            " count(*) FILTER (WHERE ended_at IS NULL AND process_end IS DISTINCT FROM 'kill')"
            "   AS cut_otherwise"
            " FROM runs"
        )
        assert runs is not None
        finished_twice = await conn.fetchval(
            "SELECT count(*) FROM (SELECT job_id FROM chaos_runs WHERE ended_how = 'ok'"
            " GROUP BY job_id HAVING count(*) > 1) AS twice"
        )
        never_ran = await conn.fetchval(
            "SELECT count(*) FROM jobs j WHERE NOT EXISTS"
            " (SELECT 1 FROM chaos_runs r WHERE r.job_id = j.id AND r.ended_how = 'ok')"
        )
        overlap_sql = (
            "FROM runs a JOIN runs b ON a.job_id = b.job_id AND a.run_id < b.run_id"
            " AND a.started_at < b.effective_end AND b.started_at < a.effective_end"
        )
        overlaps = await conn.fetchval(f"SELECT count(*) {overlap_sql}")
        examples = await conn.fetch(
            "SELECT a.job_id, a.worker AS a_worker, a.attempt AS a_attempt,"
            " a.started_at AS a_start, a.effective_end AS a_end, a.ended_how AS a_how,"
            " a.process_end AS a_process_end,"
            " b.worker AS b_worker, b.attempt AS b_attempt, b.started_at AS b_start,"
            " b.effective_end AS b_end, b.ended_how AS b_how, b.process_end AS b_process_end"
            f" {overlap_sql} ORDER BY a.started_at LIMIT 5"
        )
        # A run that never ended and whose process did not end either would make the
        # overlap rule blind; there should be none (every child is ended above).
        unbounded = await conn.fetchval("SELECT count(*) FROM runs WHERE effective_end IS NULL")
        last_done = await conn.fetchval("SELECT max(finished_at) FROM jobs WHERE status = 'DONE'")
        # For each run cut off by a kill: how long until its job started again.
        reruns = await conn.fetch(
            "SELECT r.job_id, r.worker, e.exited_at AS killed_at,"
            " (SELECT min(n.started_at) FROM chaos_runs n"
            "  WHERE n.job_id = r.job_id AND n.started_at > e.exited_at) AS next_start"
            " FROM chaos_runs r JOIN chaos_exits e ON e.worker = r.worker AND e.how = 'kill'"
            " WHERE r.ended_at IS NULL"
        )
        # What the jobs that did not end DONE say about why.
        not_done = await conn.fetch(
            "SELECT id, status, attempts, max_attempts, locked_by, last_error FROM jobs"
            " WHERE status <> 'DONE' ORDER BY id LIMIT 10"
        )
    finally:
        await conn.close()

    jobs_total = sum(statuses.values())
    done = statuses.get("DONE", 0)
    failed = statuses.get("FAILED", 0)
    lost = jobs_total - done
    last_kill = max(children.kill_times) if children.kill_times else None
    limit = 2 * stale.total_seconds()
    recovery: float | None = None
    if lost == 0 and last_kill is not None and last_done is not None:
        recovery = max(0.0, (last_done - last_kill).total_seconds())
    waits = sorted(
        (
            ((row["next_start"] - row["killed_at"]).total_seconds(), row)
            for row in reruns
            if row["next_start"] is not None
        ),
        key=lambda pair: pair[0],
    )
    never_rerun = sum(1 for row in reruns if row["next_start"] is None)
    stopped = children.kills_stopped
    checks = {
        "no job lost": lost == 0,
        "no job FAILED": failed == 0,
        "no overlapping runs": overlaps == 0 and unbounded == 0,
        "recovery within twice the stale period": recovery is not None and recovery <= limit,
        "cut-off jobs ran again within twice the stale period": never_rerun == 0
        and all(wait <= limit for wait, _ in waits),
        "every job finished while the kills went on": stopped.get("jobs_unfinished") == 0,
    }

    def when(value: datetime | None) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "settings": {
            "jobs": args.jobs,
            "workers": args.workers,
            "concurrency": args.concurrency,
            "kill_every_seconds": args.kill_every,
            "deadline_seconds": args.deadline,
            "recovery_wait_seconds": args.recovery_wait,
            "seed": args.seed,
            "stale_period_seconds": stale.total_seconds(),
        },
        "elapsed_seconds": round(elapsed, 1),
        "jobs": {
            "DONE": done,
            "FAILED": failed,
            "other": {s: n for s, n in statuses.items() if s not in ("DONE", "FAILED")},
            "lost": lost,
            "never_ran_to_completion": never_ran,
            "not_done_examples": [dict(row) for row in not_done],
        },
        "runs": {
            "total": runs["total"],
            "ended_ok": runs["ok"],
            "ended_cancelled": runs["cancelled"],
            "ended_error": runs["error"],
            "cut_off_by_kills": runs["cut_by_kill"],
            "cut_off_otherwise": runs["cut_otherwise"],
        },
        "jobs_finished_twice": finished_twice,
        "overlapping_runs": {
            "pairs": overlaps,
            "runs_without_any_end": unbounded,
            "examples": [
                {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}
                for row in examples
            ],
        },
        "kills": len(children.kill_times),
        "kills_stopped": children.kills_stopped,
        "workers_started": children.started,
        "workers_died_by_themselves": unexpected_exits,
        "postgres_restart": restart,
        "recovery": {
            "last_kill": when(last_kill),
            "last_job_done": when(last_done),
            "seconds": round(recovery, 1) if recovery is not None else None,
            "limit_seconds": limit,
        },
        "rerun_after_kill": {
            "cut_off_runs": len(reruns),
            "never_ran_again": never_rerun,
            "median_seconds": round(waits[len(waits) // 2][0], 1) if waits else None,
            "max_seconds": round(waits[-1][0], 1) if waits else None,
            "over_limit": sum(1 for wait, _ in waits if wait > limit),
            "limit_seconds": limit,
            "longest": [
                {
                    "job_id": row["job_id"],
                    "killed_at": row["killed_at"].isoformat(),
                    "next_start": row["next_start"].isoformat(),
                    "seconds": round(wait, 1),
                }
                for wait, row in waits[-3:]
            ],
        },
        "checks": checks,
        "ok": all(checks.values()),
        "overlap_rule": (
            "runs a and b of one job overlap if a.start < b.end and b.start < a.end; a run "
            "with no end record ends when its worker process ended (the parent's SIGKILL "
            "time, or when it saw the process gone, or the teardown kill)"
        ),
    }


def show(report: dict[str, Any]) -> None:
    jobs, runs, rec = report["jobs"], report["runs"], report["recovery"]
    s = report["settings"]
    lines = [
        f"chaos: {s['jobs']} jobs, {s['workers']} workers x {s['concurrency']} slots, "
        f"a SIGKILL every {s['kill_every_seconds']} s, stale period "
        f"{s['stale_period_seconds']:.0f} s; {report['elapsed_seconds']} s in all",
        f"jobs: DONE {jobs['DONE']}, FAILED {jobs['FAILED']}, other {jobs['other']}, "
        f"lost (not DONE) {jobs['lost']}",
        f"runs: {runs['total']} in all, {runs['ended_ok']} ended ok, "
        f"{runs['ended_cancelled']} cancelled, {runs['ended_error']} errors, "
        f"{runs['cut_off_by_kills']} cut off by kills, {runs['cut_off_otherwise']} cut off "
        "otherwise",
        *(
            f"  not DONE: job {row['id']} {row['status']} attempt {row['attempts']} of "
            f"{row['max_attempts']} ({row['locked_by']}): {row['last_error']}"
            for row in jobs["not_done_examples"]
        ),
        f"jobs finished twice: {report['jobs_finished_twice']}",
        f"overlapping runs: {report['overlapping_runs']['pairs']} pairs",
    ]
    for example in report["overlapping_runs"]["examples"]:
        lines.append(f"  {example}")
    restart = report["postgres_restart"]
    lines += [
        f"kills: {report['kills']}, stopped {report['kills_stopped']}",
        f"workers started {report['workers_started']}, "
        f"died by themselves {report['workers_died_by_themselves']}; PostgreSQL restart: "
        f"{restart}",
        f"recovery: last kill {rec['last_kill']}, last job done {rec['last_job_done']}: "
        + (f"{rec['seconds']} s" if rec["seconds"] is not None else "never (jobs left)")
        + f" vs {rec['limit_seconds']:.0f} s (twice the stale period)",
    ]
    again = report["rerun_after_kill"]
    lines.append(
        f"jobs cut off by a kill started again after: median {again['median_seconds']} s, "
        f"max {again['max_seconds']} s; {again['over_limit']} of {again['cut_off_runs']} "
        f"over {again['limit_seconds']:.0f} s, {again['never_ran_again']} never"
    )
    lines += [f"{'PASS' if ok else 'FAIL'}: {name}" for name, ok in report["checks"].items()]
    print("\n".join(lines), flush=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=8, help="slots per worker")
    parser.add_argument("--kill-every", type=float, default=2.0, help="seconds between kills")
    parser.add_argument(
        "--deadline", type=float, default=600.0, help="seconds after which the kills stop"
    )
    parser.add_argument(
        "--recovery-wait",
        type=float,
        default=180.0,
        help="seconds to wait, once the kills stop, for the jobs still not DONE",
    )
    parser.add_argument("--seed", type=int, default=None, help="for the choice of victims")
    parser.add_argument(
        "--json", metavar="FILE", help="also write the report as JSON ('-': stdout)"
    )
    parser.add_argument("--worker", metavar="DSN", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.worker:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(worker_main(args.worker, args.concurrency))
        return 0
    random.seed(args.seed)
    # SIGTERM ends the run like Ctrl-C does: through the finally below.
    signal.signal(signal.SIGTERM, interrupt)
    cluster = ThrowawayCluster()
    children = Children(cluster.dsn, args.concurrency)
    try:
        cluster.init().start()
        report = asyncio.run(run(args, cluster, children))
    except KeyboardInterrupt:
        log("interrupted")
        return 2
    finally:
        children.kill_all()
        cluster.destroy()
    show(report)
    if args.json == "-":
        print(json.dumps(report, indent=2))
    elif args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
