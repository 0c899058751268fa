"""The commands that look at and act on the queue's jobs: ``status``, ``workers``,
``schedules``, ``jobs list|show|retry|cancel``, ``prune`` and ``pause|resume|paused``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .command_support import CommandError, job_dict, to_json, with_store
from .formatting import count_text, duration_text, printable

if TYPE_CHECKING:
    from pqrun import PgJobStore
    from pqrun.models import AttemptError, Job


def cmd_status(args: argparse.Namespace) -> int:
    status = with_store(args, lambda store: store.queue_status())
    if args.json:
        print(to_json(status))
        return 0
    print(format_status(status))
    return 0


def format_status(status: Mapping[str, Any]) -> str:
    lines = [f"pqrun status: schema {printable(status['schema'])}, at {status['now']}", ""]
    counts = status["counts"]
    oldest = status["oldest_due_seconds"]
    due = sum(t["due"] for t in status["by_type"])
    lines.append("jobs by status")
    for name, entry in counts.items():
        note = ""
        if name == "READY":
            at_least = "" if entry["exact"] else "at least "
            note = f"  ({at_least}{due:,} due now"
            if oldest is not None:
                note += f", the oldest waiting {duration_text(oldest, tenths=True)}"
            note += ")"
        lines.append(f"  {name:<10} {count_text(entry):>12}{note}")
    if not all(entry["exact"] for entry in counts.values()):
        lines.append("  (~: the planner's estimate; >=: more than counted, no estimate yet)")
    lines += ["", "active jobs by type"]
    if status["by_type"]:
        lines.append(f"  {'job_type':<24} {'ready':>9} {'due':>9} {'running':>9} {'waiting':>9}")
        for entry in status["by_type"]:
            mark = "  PAUSED" if entry.get("paused") else ""
            lines.append(
                f"  {printable(entry['job_type']):<24} {entry['ready']:>9,} {entry['due']:>9,} "
                f"{entry['running']:>9,} {entry.get('waiting', 0):>9,}{mark}"
            )
        lines.append("  (waiting: RUNNING, claimed into a worker's buffer, handler not started)")
    else:
        lines.append("  (none)")
    paused = status.get("paused", [])
    if paused:
        lines += ["", f"paused job types: {len(paused)} (no worker claims their jobs)"]
        lines += [f"  {paused_line(entry)}" for entry in paused]
    lines += ["", f"  {'finished':<24} {'DONE':>12} {'FAILED':>12}"]
    for window, label in (("last_minute", "last minute"), ("last_hour", "last hour")):
        done = status["throughput"]["DONE"][window]
        failed = status["throughput"]["FAILED"][window]
        lines.append(
            f"  {label:<24} {rate_text(done):>12} {rate_text(failed):>12}"
            f"   ({done['per_second']:.1f}/s done)"
        )
    workers = status["workers"]
    lines += ["", f"workers alive: {len(workers)}"]
    for worker in workers:
        lines.append("  " + worker_line(worker))
    return "\n".join(lines)


def rate_text(entry: Mapping[str, Any]) -> str:
    return count_text(entry)


def worker_line(worker: Mapping[str, Any]) -> str:
    types = printable(",".join(worker["job_types"])) or "-"
    return (
        f"{printable(worker['worker_id'])}  pid {worker['pid']} on {printable(worker['host'])}, "
        f"{worker.get('busy', 0)} of {worker['concurrency']} slots busy, types {types}, "
        f"heartbeat {duration_text(worker['heartbeat_age_seconds'], tenths=True)} ago"
    )


def cmd_workers(args: argparse.Namespace) -> int:
    status = with_store(args, lambda store: store.queue_status(count_cap=1, rate_cap=1))
    return print_listing(args, status["workers"], "no workers registered", worker_line)


def print_listing(
    args: argparse.Namespace,
    items: list[Any],
    empty: str,
    line: Callable[[Any], str],
) -> int:
    """A listing command's output: ``--json``, else a line per item, or ``empty``."""
    if args.json:
        print(to_json(items))
    elif not items:
        print(empty)
    else:
        for item in items:
            print(line(item))
    return 0


def cmd_schedules(args: argparse.Namespace) -> int:
    schedules = with_store(args, lambda store: store.list_schedules())
    if args.json:
        print(to_json(schedules))
        return 0
    if not schedules:
        print("no schedules stored (a worker stores those it declares when it starts)")
        return 0
    for item in schedules:
        timing = printable(
            item["cron"] or f"every {duration_text(item['every_seconds'], tenths=True)}"
        )
        last = item["last_run_at"].isoformat() if item["last_run_at"] else "never"
        job = f" (job {item['last_job_id']})" if item["last_job_id"] else ""
        print(
            f"{printable(item['name'])}  {printable(item['job_type'])}  {timing} "
            f"{printable(item['timezone'])}  "
            f"next {item['next_run_at'].isoformat()}  last {last}{job}  "
            f"declared {item['declared_at'].isoformat()}"
        )
    return 0


def cmd_jobs_list(args: argparse.Namespace) -> int:
    jobs = with_store(
        args,
        lambda store: store.list_jobs(status=args.status, job_type=args.type, limit=args.limit),
    )
    if args.json:
        print(to_json([job_dict(job) for job in jobs]))
        return 0
    if not jobs:
        print("no jobs")
        return 0
    print(f"{'id':>8}  {'job_type':<20} {'status':<9} {'attempts':>8}  {'run_after':<19}  error")
    for job in jobs:
        error = printable((job.last_error or "").split("\n", 1)[0])[:60]
        run_after = job.run_after.strftime("%Y-%m-%d %H:%M:%S")
        print(
            f"{job.id:>8}  {printable(job.job_type):<20} {job.status.value:<9} "
            f"{job.attempts:>4}/{job.max_attempts:<3}  {run_after:<19}  {error}"
        )
    return 0


def cmd_jobs_show(args: argparse.Namespace) -> int:
    async def read(store: PgJobStore) -> tuple[Job | None, list[AttemptError]]:
        return await store.get_job(args.id), await store.error_history(args.id)

    job, history = with_store(args, read)
    if job is None:
        raise CommandError(f"no job {args.id} (it may have been pruned)")
    fields = job_dict(job)
    if args.json:
        fields["error_history"] = [dataclasses.asdict(entry) for entry in history]
        print(to_json(fields))
        return 0
    for name, value in fields.items():
        if name in ("payload", "result") and value is not None:
            value = json.dumps(value)
        if name == "last_error" and value:
            print(f"{name}:")
            for line in printable(value, multiline=True).splitlines():
                print(f"    {line}")
            continue
        print(f"{name + ':':<17}{printable(value) if value is not None else '-'}")
    if history:
        print("errors by attempt:")
    for entry in history:
        when = entry.at.strftime("%Y-%m-%d %H:%M:%S UTC")
        worker = printable(entry.worker or "-")
        print(f"    attempt {entry.attempt}, {when}, {worker}: {entry.outcome}")
        for line in printable(entry.error, multiline=True).splitlines():
            print(f"        {line}")
    return 0


def cmd_jobs_retry(args: argparse.Namespace) -> int:
    if (args.id is None) == (not args.failed):
        raise CommandError("give a job id, or --failed (optionally with --type), not both")
    if args.id is not None:
        if args.type:
            raise CommandError("--type goes with --failed, not with a job id")
        if not with_store(args, lambda store: store.retry(args.id)):
            raise CommandError(f"job {args.id} is not FAILED or CANCELLED (or does not exist)")
        print(f"job {args.id}: READY again")
        return 0
    retried, conflicts = with_store(args, lambda store: store.retry_failed(args.type))
    kind = f" {args.type}" if args.type else ""
    print(f"retried {len(retried)} FAILED{kind} jobs")
    if conflicts:
        print(
            f"left {len(conflicts)} FAILED: an active job holds their dedupe_key "
            f"(ids {', '.join(map(str, conflicts[:20]))}{', ...' if len(conflicts) > 20 else ''})",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_jobs_enqueue(args: argparse.Namespace) -> int:
    job_id = with_store(
        args,
        lambda store: store.enqueue(
            args.job_type,
            args.payload,
            priority=args.priority,
            run_after=args.run_after,
            dedupe_key=args.dedupe_key,
            max_attempts=args.max_attempts,
            timeout_seconds=args.timeout,
        ),
    )
    print(json.dumps({"id": job_id}) if args.json else job_id)
    return 0


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    if (args.id is None) == (args.type is None):
        raise CommandError("give a job id, or --type TYPE (every READY or RUNNING job of it)")
    if args.type is not None:
        cancelled = with_store(args, lambda store: store.cancel_type(args.type))
        print(f"cancelled {len(cancelled):,} {printable(args.type)} jobs")
        return 0
    if not with_store(args, lambda store: store.cancel(args.id)):
        raise CommandError(f"job {args.id} is not READY or RUNNING (or does not exist)")
    print(f"job {args.id}: CANCELLED")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    pruned = with_store(
        args,
        lambda store: store.prune(
            None if args.keep_done_forever else args.keep_done,
            None if args.keep_failed_forever else args.keep_failed,
            batch_size=args.batch_size,
        ),
    )
    print(
        f"pruned {pruned.total:,} jobs: {pruned.done:,} DONE, {pruned.failed:,} FAILED, "
        f"{pruned.cancelled:,} CANCELLED"
    )
    if pruned.busy:
        print("stopped early: another process is pruning this queue right now", file=sys.stderr)
        return 1
    return 0


def paused_line(entry: Mapping[str, Any]) -> str:
    """One paused job type: its name, since when, and why."""
    since = entry["paused_at"]
    since_text = since if isinstance(since, str) else since.isoformat()
    reason = f": {printable(entry['reason'])}" if entry.get("reason") else ""
    return f"{printable(entry['job_type'])}  since {since_text[:19]}{reason}"


def cmd_pause(args: argparse.Namespace) -> int:
    async def pause(store: PgJobStore) -> tuple[bool, dict[str, Any] | None, list[Any]]:
        paused = await store.pause(args.job_type, reason=args.reason)
        # What is known of the type: its active jobs (capped counts), its workers.
        active = [q for q in await store.queue_stats() if q["job_type"] == args.job_type]
        workers = [w for w in await store.list_workers() if args.job_type in w["job_types"]]
        return paused, active[0] if active else None, workers

    try:
        paused, active, workers = with_store(args, pause)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    name = printable(args.job_type)
    if paused:
        ready = 0 if active is None else active["ready"]
        print(
            f"job type {name} paused: no worker claims its READY jobs ({ready:,} now) until "
            f"`pqrun resume {name}` (running ones finish)"
        )
        if active is None and not workers:
            print(
                f"pqrun: note: no READY or RUNNING job of type {name}, and no live worker "
                "takes it: check the name (`pqrun status` lists the types)",
                file=sys.stderr,
            )
    else:
        print(f"job type {name} was paused already (`pqrun paused` says since when and why)")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    try:
        resumed = with_store(args, lambda store: store.resume(args.job_type))
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    name = printable(args.job_type)
    if not resumed:
        raise CommandError(f"job type {name} is not paused (`pqrun paused` lists those that are)")
    print(f"job type {name} resumed: the workers are woken to claim its jobs")
    return 0


def cmd_paused(args: argparse.Namespace) -> int:
    paused = with_store(args, lambda store: store.paused_types())
    return print_listing(args, paused, "no job type is paused", paused_line)
