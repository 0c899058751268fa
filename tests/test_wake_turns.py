"""A notification of inserted jobs wakes only the workers whose turn it is, not every worker.

Workers here poll once a minute, so a job run within WAKE_WITHIN seconds was found
because a notification woke a worker. Claims are counted per worker (pickup_batch).
Which workers a job's notification names follows from its id (turn_order); a test that
needs a given order sets the id sequence so that the next job gets an id with it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from pqrun import IdlePollPolicy, JobContext, PgJobStore, Snooze, Worker
from pqrun._worker.wake_turns import COVER_ROUNDS, InsertHint, WakeRoster, turn_order

from .conftest import reset_jobs
from .helpers import listener_pids, status_of, wait_until

POLL = IdlePollPolicy(60.0, 60.0)
WAKE_WITHIN = 20.0  # far below the poll: only a notification wakes a worker this soon


class CountingStore(PgJobStore):
    claims = 0

    async def pickup_batch(self, worker_id: str, job_types: Any, limit: int) -> Any:
        self.claims += 1
        return await super().pickup_batch(worker_id, job_types, limit)


@dataclass
class Crew:
    """Running workers, each on a store of its own that counts its claims."""

    dsn: str
    conn: asyncpg.Connection
    stack: AsyncExitStack
    workers: dict[str, Worker] = field(default_factory=dict)
    stores: dict[str, CountingStore] = field(default_factory=dict)
    ran: dict[int, str] = field(default_factory=dict)  # job id -> worker that ran it
    release: asyncio.Event = field(default_factory=asyncio.Event)
    blocked: dict[str, int] = field(default_factory=dict)  # worker -> job held in a slot

    async def start(
        self,
        worker_id: str,
        job_types: Sequence[str] = ("t", "block"),
        *,
        concurrency: int = 2,
        stale_after: float = 6.0,  # heartbeats, and roster reads, every second
        listen: bool = True,
        blocking: Sequence[str] = ("block",),
    ) -> Worker:
        store = CountingStore(self.dsn)
        await store.start()
        self.stack.push_async_callback(store.close)

        def handler_for(job_type: str) -> Callable[[JobContext], Awaitable[None]]:
            async def handler(ctx: JobContext) -> None:
                self.ran[ctx.job.id] = worker_id
                if job_type in blocking:
                    self.blocked[worker_id] = ctx.job.id
                    await self.release.wait()

            return handler

        worker = Worker(
            store,
            {t: handler_for(t) for t in job_types},
            worker_id=worker_id,
            concurrency=concurrency,
            idle_policy=POLL,
            enable_reaper=False,
            default_stale_after=timedelta(seconds=stale_after),
            listen=listen,
        )
        await worker.start()
        self.stack.push_async_callback(worker.stop)
        self.workers[worker_id] = worker
        self.stores[worker_id] = store
        return worker

    def roster(self, worker_id: str) -> WakeRoster:
        roster = self.workers[worker_id]._parts.listener.roster
        assert roster is not None
        return roster

    async def settled(self) -> None:
        """Every worker listening, knowing all the others, past its start-up claims."""
        count = len(self.workers)

        async def ready() -> bool:
            listening = await listener_pids(self.conn, self.since)
            return (
                len(listening) >= count
                and all(len(self.roster(w)) == count for w in self.workers)
                and all(s.claims >= 2 for s in self.stores.values())
            )

        await wait_until(ready, within=30)

    async def all_busy(self, names: Sequence[str]) -> CountingStore:
        """Start these workers, one slot each, and make each busy with a job that waits;
        returns the first one's store."""
        for name in names:
            await self.start(name, concurrency=1)
        await self.settled()
        store = self.stores[names[0]]
        await store.enqueue_many([{"job_type": "block"}] * len(names))
        await wait_until(lambda: _true(len(self.blocked) == len(names)), within=WAKE_WITHIN)
        return store

    def claims(self) -> int:
        return sum(s.claims for s in self.stores.values())

    async def next_id_is(self, job_id: int) -> None:
        """Make ``job_id`` the id of the next job inserted."""
        await self.conn.execute(
            "SELECT setval(pg_get_serial_sequence('jobs', 'id'), $1)", job_id - 1
        )

    async def run_one(self, job_type: str = "t", *, first_id: int | None = None) -> int:
        """Enqueue one job (with this id, if given) and wait until a worker ran it."""
        if first_id is not None:
            await self.next_id_is(first_id)
        store = next(iter(self.stores.values()))
        job_id = await store.enqueue(job_type)
        assert first_id is None or job_id == first_id

        async def ran() -> bool:
            return job_id in self.ran

        await wait_until(ran, within=WAKE_WITHIN)
        return job_id

    since: Any = None


@pytest.fixture
async def crew(dsn: str, conn: asyncpg.Connection) -> AsyncIterator[Crew]:
    await reset_jobs(dsn)
    async with AsyncExitStack() as stack:
        team = Crew(dsn, conn, stack)
        team.since = await conn.fetchval("SELECT clock_timestamp()")
        try:
            yield team
        finally:
            team.release.set()  # blocked handlers end before the workers stop


def id_where(order_ok: Callable[[list[str]], bool], workers: Sequence[str], start: int) -> int:
    """The first job id from ``start`` on whose turn order satisfies ``order_ok``."""
    for first_id in range(start, start + 10_000):
        if order_ok(turn_order(first_id, workers)):
            return first_id
    raise AssertionError("no such id")


async def next_id(conn: asyncpg.Connection) -> int:
    last: int = await conn.fetchval("SELECT coalesce(max(id), 0) FROM jobs")
    return last + 1000


async def test_one_job_wakes_its_turn_and_a_spare_not_every_worker(crew: Crew) -> None:
    for i in range(5):
        await crew.start(f"w{i}")
    await crew.settled()
    before = crew.claims()
    jobs = [await crew.run_one() for _ in range(20)]
    # Each notification of one job names one worker and a spare: 2 claims per job, not
    # 5 (every worker). Slack for a start-up claim still under way.
    woken = crew.claims() - before
    assert woken <= len(jobs) * COVER_ROUNDS + 5, woken
    # The turn moves with the job id: the work spreads over the workers.
    assert len({crew.ran[j] for j in jobs}) >= 3


async def test_a_worker_whose_turn_it_is_while_busy_passes_the_job_on(crew: Crew) -> None:
    names = ["w0", "w1", "w2"]
    for name in names:
        await crew.start(name, concurrency=1)
    await crew.settled()
    for _ in range(2):  # two workers busy with a job that waits
        store = crew.stores["w0"]
        await store.enqueue("block")
    await wait_until(lambda: _true(len(crew.blocked) == 2), within=WAKE_WITHIN)
    (free,) = set(names) - set(crew.blocked)
    # A job whose notification names the two busy workers (turn and spare), not the free one.
    first_id = id_where(lambda order: order[-1] == free, names, await next_id(crew.conn))
    job_id = await crew.run_one(first_id=first_id)
    assert crew.ran[job_id] == free
    assert sum(w._parts.listener.hints.woke_everyone for w in crew.workers.values()) >= 1


async def test_a_busy_worker_does_not_hold_a_job_its_slots_cannot_run(crew: Crew) -> None:
    # Its one slot taking the first job let its claim take the second into the buffer,
    # where it waited behind the first (put back only after half the stale period),
    # hidden from an idle worker. (Slow handlers: no prefetch.)
    await crew.start("busy", concurrency=1, stale_after=600)
    store = crew.stores["busy"]
    first, second = await store.enqueue_many([{"job_type": "block"}] * 2)
    await wait_until(lambda: _true("busy" in crew.blocked), within=WAKE_WITHIN)
    await crew.start("idle", concurrency=1, stale_after=600)

    async def ran() -> bool:
        return second in crew.ran

    await wait_until(ran, within=WAKE_WITHIN)
    assert crew.ran == {first: "busy", second: "idle"}


async def test_jobs_a_partly_busy_worker_first_in_turn_cannot_take_go_to_the_spares(
    crew: Crew,
) -> None:
    # 'big' (4 slots, 3 of them busy) is first in turn order for 3 new slow jobs: its
    # capacity (4) covers them, but it takes one. The spares cover all 3 again.
    await crew.start("big", ["hold", "slow"], concurrency=4, blocking=["hold", "slow"])
    for name in ("idle1", "idle2"):
        await crew.start(name, ["slow"], concurrency=1, blocking=["slow"])
    await crew.settled()
    store = crew.stores["big"]
    held = await store.enqueue_many([{"job_type": "hold"}] * 3)
    await wait_until(lambda: _true(all(j in crew.ran for j in held)), within=WAKE_WITHIN)
    names = ["big", "idle1", "idle2"]
    first_id = id_where(lambda order: order[0] == "big", names, await next_id(crew.conn))
    await crew.next_id_is(first_id)
    slow = await store.enqueue_many([{"job_type": "slow"}] * 3)
    assert min(slow) == first_id
    await wait_until(lambda: _true(all(j in crew.ran for j in slow)), within=WAKE_WITHIN)


async def test_a_worker_left_without_room_checks_for_jobs_left_behind_and_wakes_everyone(
    crew: Crew,
) -> None:
    # Turn and spares are all busy with slow jobs; an idle worker is not among them.
    names = ["a", "b", "c", "d"]
    for name in names:
        await crew.start(name, ["slow"], concurrency=1, blocking=["slow"])
    await crew.settled()
    store = crew.stores["a"]
    # Three of them busy, each with a job that waits; which three does not matter.
    busy = await store.enqueue_many([{"job_type": "slow"}] * 3)
    await wait_until(lambda: _true(all(j in crew.ran for j in busy)), within=WAKE_WITHIN)
    idle = set(names) - {crew.ran[j] for j in busy}
    (free,) = idle
    first_id = id_where(lambda order: order[-1] == free, names, await next_id(crew.conn))
    await crew.next_id_is(first_id)
    job_id = await store.enqueue("slow")
    assert job_id == first_id
    await wait_until(lambda: _true(job_id in crew.ran), within=WAKE_WITHIN)
    assert crew.ran[job_id] == free
    assert sum(w._parts.listener.hints.woke_everyone for w in crew.workers.values()) >= 1


async def test_saturated_workers_all_named_wake_nobody_else(crew: Crew) -> None:
    # Every worker busy: a bulk insert names every worker, and none of them checks
    # for jobs left behind (nobody was left out to wake).
    store = await crew.all_busy([f"w{i}" for i in range(6)])
    hints = [w._parts.listener.hints for w in crew.workers.values()]
    heard_before = [h.hints_heard for h in hints]
    for _ in range(10):
        await store.enqueue_many([{"job_type": "t"}] * 50)

    async def all_heard() -> bool:
        return all(h.hints_heard - n >= 10 for h, n in zip(hints, heard_before, strict=True))

    await wait_until(all_heard, within=WAKE_WITHIN)
    # A check is planned the moment a hint is heard: none was.
    assert [h.checks_planned for h in hints] == [0] * len(hints)
    assert sum(h.woke_everyone for h in hints) == 0


async def test_a_worker_whose_listen_connection_stops_hearing_is_soon_not_counted_on(
    crew: Crew,
) -> None:
    # d0 and d1 stop hearing (a dropped NAT entry, a failover: here, UNLISTEN); their
    # probes, sent with every roster read, find it out and they listen again.
    names = ["d0", "d1", "ok"]
    for name in names:
        await crew.start(name, ["t"], concurrency=1)
    await crew.settled()
    for name in ("d0", "d1"):
        listener = crew.workers[name]._parts.listener
        async with listener._connection_free():
            await listener._conn.execute("UNLISTEN *")
    first_id = id_where(lambda order: order[-1] == "ok", names, await next_id(crew.conn))
    await crew.run_one("t", first_id=first_id)


async def test_a_worker_stopping_while_not_listening_still_hands_its_turns_over(
    crew: Crew,
) -> None:
    names = ["w0", "w1", "w2"]
    for name in names:
        await crew.start(name)
    await crew.settled()
    first_id = id_where(lambda order: order[-1] == "w2", names, await next_id(crew.conn))
    await crew.next_id_is(first_id)
    job_id = await crew.stores["w2"].enqueue("t", run_after=timedelta(seconds=4))
    assert job_id == first_id

    def waiting_for_it(name: str) -> bool:
        return bool(crew.workers[name]._parts.listener.hints.delayed)

    await wait_until(lambda: _true(waiting_for_it("w0") and waiting_for_it("w1")), within=30)
    for name in ("w0", "w1"):
        store = crew.stores[name]

        async def refuse(*args: object, **kwargs: object) -> Any:
            raise OSError("network blip")

        store.listen = refuse  # type: ignore[method-assign]
        listener = crew.workers[name]._parts.listener
        await crew.conn.execute("SELECT pg_terminate_backend($1)", listener._conn.get_server_pid())

    def deaf(name: str) -> bool:
        return crew.workers[name]._parts.listener._conn is None

    await wait_until(lambda: _true(deaf("w0") and deaf("w1")), within=WAKE_WITHIN)
    await asyncio.gather(crew.workers["w0"].stop(), crew.workers["w1"].stop())
    await wait_until(lambda: _true(job_id in crew.ran), within=WAKE_WITHIN)
    assert crew.ran[job_id] == "w2"


async def test_a_busy_worker_named_before_a_crashed_checker_wakes_everyone(crew: Crew) -> None:
    # Turn order w0 (busy), ghost (crashed, still listed: the last named, the checker),
    # w1 (idle, not named). w0 has no room, so it checks too, a little later.
    await crew.start("w0", ["t", "block"], concurrency=1, blocking=["block"])
    store = crew.stores["w0"]
    await store.enqueue("block")
    await wait_until(lambda: _true("w0" in crew.blocked), within=WAKE_WITHIN)
    await crew.start("w1", ["t", "block"], concurrency=1)
    await crew.conn.execute(
        "INSERT INTO job_workers (worker_id, host, pid, job_types, concurrency, heartbeat_at,"
        " wake_capacity) VALUES ('ghost', 'gone', 1, '{t}', 1, now() + interval '1 hour', 1)"
    )
    await wait_until(lambda: _true(all(len(crew.roster(w)) == 3 for w in ("w0", "w1"))), 30)
    names = ["w0", "ghost", "w1"]
    first_id = id_where(lambda order: order == names, names, await next_id(crew.conn))
    job_id = await crew.run_one(first_id=first_id)
    assert crew.ran[job_id] == "w1"


async def test_the_last_named_checks_even_when_it_had_room_its_claim_may_take_other_jobs(
    crew: Crew,
) -> None:
    # a and b also handle 'y'; one transaction inserts two 'y' jobs, then a 't' job whose
    # turn goes to a and b. Idle, both claim, and take the older 'y' jobs first: the
    # 't' job is left for c, which only the check wakes.
    for name in ("a", "b"):
        await crew.start(name, ["t", "y"], concurrency=1, blocking=["y"])
    await crew.start("c", ["t"], concurrency=1)
    await crew.settled()
    names = ["a", "b", "c"]
    first_id = id_where(lambda order: order[-1] == "c", names, await next_id(crew.conn) + 2)
    await crew.next_id_is(first_id - 2)
    async with crew.conn.transaction():
        await crew.conn.execute("INSERT INTO jobs (job_type) VALUES ('y'), ('y')")
        job_id = await crew.conn.fetchval("INSERT INTO jobs (job_type) VALUES ('t') RETURNING id")
    assert job_id == first_id
    await wait_until(lambda: _true(job_id in crew.ran), within=WAKE_WITHIN)
    assert crew.ran[job_id] == "c"


async def test_a_crashed_worker_still_listed_leaves_the_job_to_the_spare(crew: Crew) -> None:
    names = ["w0", "w1"]
    for name in names:
        await crew.start(name)
    # A worker that died a moment ago: its row is there, its heartbeat looks fresh, and
    # its capacity (8) covers both jobs: the spares cover them again.
    await crew.conn.execute(
        "INSERT INTO job_workers (worker_id, host, pid, job_types, concurrency, heartbeat_at,"
        " wake_capacity) VALUES ('ghost', 'gone', 1, '{t}', 8, now() + interval '1 hour', 8)"
    )

    async def know_the_ghost() -> bool:
        return all(len(crew.roster(w)) == 3 for w in names)

    await wait_until(know_the_ghost, within=30)
    first_id = id_where(
        lambda order: order[0] == "ghost", [*names, "ghost"], await next_id(crew.conn)
    )
    await crew.next_id_is(first_id)
    both = await crew.stores["w0"].enqueue_many([{"job_type": "block"}] * 2)
    assert min(both) == first_id
    await wait_until(lambda: _true(all(j in crew.ran for j in both)), within=WAKE_WITHIN)


async def test_workers_that_do_not_listen_are_never_counted_on_for_a_turn(crew: Crew) -> None:
    # Two workers that poll only (listen=False; or behind a pooler without direct_dsn),
    # first in the turn order: if the listening worker counted on them, it would let
    # the job be until a poll, a minute later.
    await crew.start("listens")
    await crew.start("deaf1", listen=False)
    await crew.start("deaf2", listen=False)

    async def all_registered() -> bool:
        return bool(await crew.conn.fetchval("SELECT count(*) FROM job_workers") == 3)

    await wait_until(all_registered, within=30)
    reads = crew.roster("listens").reads
    await wait_until(lambda: _true(crew.roster("listens").reads > reads + 1), within=30)
    assert len(crew.roster("listens")) == 1
    first_id = id_where(
        lambda order: order[-1] == "listens",
        ["listens", "deaf1", "deaf2"],
        await next_id(crew.conn),
    )
    job_id = await crew.run_one(first_id=first_id)
    assert crew.ran[job_id] == "listens"


async def test_workers_that_stop_hand_their_turns_for_delayed_jobs_to_the_others(
    crew: Crew,
) -> None:
    names = ["w0", "w1", "w2"]
    for name in names:
        await crew.start(name)
    await crew.settled()
    # A job due in a few seconds whose turn (and spare) go to w0 and w1; both stop
    # before it is due, so only their hand-over can wake w2 before its poll.
    first_id = id_where(lambda order: order[-1] == "w2", names, await next_id(crew.conn))
    await crew.next_id_is(first_id)
    store = crew.stores["w2"]
    job_id = await store.enqueue("t", run_after=timedelta(seconds=4))
    assert job_id == first_id

    def waiting_for_it(name: str) -> bool:
        return bool(crew.workers[name]._parts.listener.hints.delayed)

    await wait_until(lambda: _true(waiting_for_it("w0") and waiting_for_it("w1")), within=30)
    assert not waiting_for_it("w2")
    await asyncio.gather(crew.workers["w0"].stop(), crew.workers["w1"].stop())

    async def ran() -> bool:
        return job_id in crew.ran

    await wait_until(ran, within=WAKE_WITHIN)
    assert crew.ran[job_id] == "w2"
    row = await crew.conn.fetchrow("SELECT locked_at, run_after FROM jobs WHERE id = $1", job_id)
    assert row is not None
    assert row["locked_at"] >= row["run_after"]


@pytest.mark.parametrize("busy_listener", [False, True])
async def test_when_several_workers_stop_at_once_a_delayed_job_goes_to_one_that_stays(
    crew: Crew, busy_listener: bool
) -> None:
    # Scale-down: w0..w3 stop together, 'stay' stays. The delayed job's turn is w0 and
    # w1; what they hand over must reach 'stay', whatever w2 and w3 (stopping too, and
    # perhaps not yet heard to leave) would be named for.
    names = ["w0", "w1", "w2", "w3", "stay"]
    for name in names:
        await crew.start(name, ["t"], concurrency=1)
    await crew.settled()
    first_id = id_where(lambda order: order == names, names, await next_id(crew.conn))
    await crew.next_id_is(first_id)
    job_id = await crew.stores["stay"].enqueue("t", run_after=timedelta(seconds=3))
    assert job_id == first_id

    def delayed(name: str) -> int:
        return crew.workers[name]._parts.listener.hints.delayed

    await wait_until(lambda: _true(bool(delayed("w0") and delayed("w1"))), within=30)
    holders = []
    if busy_listener:
        # w2, w3: a roster read or a check holds the LISTEN connection when the stop
        # comes ('left:' waits for it).
        async def hold(name: str) -> None:
            async with crew.workers[name]._parts.listener._connection_free():
                await asyncio.sleep(0.3)

        holders = [asyncio.ensure_future(hold(name)) for name in ("w2", "w3")]
    await asyncio.gather(*(crew.workers[name].stop() for name in ("w0", "w1", "w2", "w3")))
    await asyncio.gather(*holders)
    await wait_until(lambda: _true(job_id in crew.ran), within=WAKE_WITHIN)
    assert crew.ran[job_id] == "stay"


async def test_a_snooze_written_during_the_shutdown_grace_is_handed_over(crew: Crew) -> None:
    # The handler answers (Snooze) after the stop began, when the worker had already
    # told the others what it knew: it tells them again once its last outcomes are in.
    release = asyncio.Event()
    ran: list[str] = []

    async def snoozer(ctx: JobContext) -> None:
        ran.append(ctx.worker_id)
        if len(ran) == 1:
            await release.wait()
            raise Snooze(timedelta(seconds=2))

    store = CountingStore(crew.dsn)
    await store.start()
    crew.stack.push_async_callback(store.close)
    leaving = Worker(
        store, {"snoozer": snoozer}, worker_id="leaving", idle_policy=POLL,
        enable_reaper=False, shutdown_grace=30, default_stale_after=timedelta(seconds=6),
    )  # fmt: skip
    await leaving.start()
    crew.stack.push_async_callback(leaving.stop)
    job_id = await store.enqueue("snoozer")
    await wait_until(lambda: _true(ran == ["leaving"]), within=WAKE_WITHIN)
    staying = Worker(
        store, {"snoozer": snoozer}, worker_id="stay", idle_policy=POLL, enable_reaper=False,
        default_stale_after=timedelta(seconds=6),
    )  # fmt: skip
    await staying.start()
    crew.stack.push_async_callback(staying.stop)
    await wait_until(lambda: _true(staying._parts.listener.roster.loaded), within=30)  # type: ignore[union-attr]
    stopping = asyncio.ensure_future(leaving.stop())
    await wait_until(lambda: _true(leaving._parts.life.stopping.is_set()), within=30)
    release.set()  # now the Snooze: READY again in 2 s
    await stopping
    await wait_until(lambda: _true(ran == ["leaving", "stay"]), within=WAKE_WITHIN)

    async def done() -> bool:
        return await status_of(store, job_id) == "DONE"

    await wait_until(done, within=30)


async def test_when_every_worker_is_named_none_checks_for_jobs_left_behind(crew: Crew) -> None:
    names = [f"w{i}" for i in range(4)]
    await crew.all_busy(names)
    hint = InsertHint(20, 1, 20, None, "t")  # more jobs than every worker's room, twice
    turns = [crew.roster(name).turn(hint) for name in names]
    assert all(turn.claims and not turn.others_left for turn in turns)


async def test_a_worker_is_not_woken_for_job_types_it_does_not_handle(crew: Crew) -> None:
    await crew.start("a", ["a"])
    await crew.start("b", ["b"])
    await crew.settled()
    before = crew.stores["a"].claims
    for _ in range(10):
        await crew.run_one("b")
    assert crew.stores["a"].claims - before <= 1


async def test_a_worker_that_stops_is_dropped_from_the_others_rosters_at_once(
    crew: Crew,
) -> None:
    # Rosters read every 100 s: only the 'left:' notification can drop it sooner.
    first = await crew.start("first", stale_after=600)

    async def registered() -> bool:
        return bool(await crew.conn.fetchval("SELECT count(*) FROM job_workers"))

    await wait_until(registered, within=30)
    await crew.start("second", stale_after=600)
    await wait_until(lambda: _true(len(crew.roster("second")) == 2), within=30)
    await first.stop()
    await wait_until(lambda: _true(len(crew.roster("second")) == 1), within=WAKE_WITHIN)


async def test_the_insert_notification_names_type_count_ids_and_delay(
    store: PgJobStore, dsn: str
) -> None:
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(dsn)
    try:
        await listener.add_listener(store.channel, lambda *args: heard.put_nowait(args[3]))
        one = await store.enqueue("mail:send")
        assert await asyncio.wait_for(heard.get(), 10) == f"jobs:1:{one}:{one}::mail:send"
        hint = InsertHint.parse(f"jobs:1:{one}:{one}::mail:send")
        assert hint == InsertHint(1, one, one, None, "mail:send")
        ids = await store.enqueue_many([{"job_type": "t"}] * 3)
        assert await asyncio.wait_for(heard.get(), 10) == f"jobs:3:{min(ids)}:{max(ids)}::t"
        later = await store.enqueue("t", run_after=timedelta(hours=1))
        hint = InsertHint.parse(await asyncio.wait_for(heard.get(), 10))
        assert hint is not None
        assert (hint.first_id, hint.last_id) == (later, later)
        # When it is due, by the database's clock (workers correct for their own).
        due = await store.get_job(later)
        assert due is not None
        assert hint.due == pytest.approx(due.run_after.timestamp(), abs=0.001)
        # Several types, or a type too long for a payload: every worker looks.
        await store.enqueue_many([{"job_type": "t"}, {"job_type": "u"}])
        assert await asyncio.wait_for(heard.get(), 10) == ""
        await store.enqueue("x" * 5000)
        assert await asyncio.wait_for(heard.get(), 10) == ""
    finally:
        await listener.close()


async def test_a_transaction_of_many_inserts_sends_a_few_hints_then_one_plain_wake(
    store: PgJobStore, dsn: str, conn: asyncpg.Connection
) -> None:
    # PostgreSQL folds a transaction's identical notifications into one; hints are all
    # different, and each costs every worker a ranking: after 16, the plain wake-up.
    heard: list[str] = []
    listener = await asyncpg.connect(dsn)
    try:
        await listener.add_listener(store.channel, lambda *args: heard.append(args[3]))
        async with conn.transaction():
            for _ in range(500):
                await conn.execute("INSERT INTO jobs (job_type) VALUES ('t')")
        one = await store.enqueue("t")  # the next transaction has hints again

        async def all_heard() -> bool:
            return bool(heard) and heard[-1].startswith(f"jobs:1:{one}:")

        await wait_until(all_heard, within=30)
    finally:
        await listener.close()
    assert [p.startswith("jobs:") for p in heard] == [True] * 16 + [False, True]
    assert heard[16] == ""


async def test_a_stray_value_of_the_trigger_setting_never_fails_an_insert(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    for value in ("x", "-1", "99999999999", ""):
        await conn.execute(f"SET pqrun.hints_sent = '{value}'")
        assert await conn.fetchval("INSERT INTO jobs (job_type) VALUES ('t') RETURNING id")
    await conn.execute("RESET pqrun.hints_sent")


@pytest.mark.parametrize(
    "payload",
    [
        "jobs:",
        "jobs:1:2:3",
        "jobs:1:1::t",  # the earlier format, without the last id
        "jobs:0:1:1::t",
        "jobs:-1:1:1::t",
        "jobs:x:1:1::t",
        "jobs:1:x:1::t",
        "jobs:1:1:x::t",
        "jobs:1:-1:1::t",
        "jobs:1:2:1::t",  # last before first
        f"jobs:1:1:{1 << 63}::t",  # beyond bigint
        "jobs:1:1:1:nan:t",
        "jobs:1:1:1:inf:t",
        "jobs:1:1:1:1e999:t",
        "jobs:1:1:1::",
    ],
)
def test_a_malformed_hint_is_ignored(payload: str) -> None:
    assert InsertHint.parse(payload) is None


def test_forged_huge_numbers_are_read_within_bounds() -> None:
    hint = InsertHint.parse(f"jobs:{10**40}:0:{(1 << 63) - 1}:1e300:t")
    assert hint is not None
    assert WakeRoster("w", ["t"]).turn(hint).claims
    hint = InsertHint.parse(f"jobs:{10**40}:0:{(1 << 63) - 1}::t")
    assert hint is not None
    assert 1 <= hint.count <= 1 << 31
    assert hint.last_id - hint.first_id <= 100_000  # a check reads a bounded range
    assert WakeRoster("w", ["t"]).my_turn(hint)


def views_agreeing(workers: dict[str, tuple[set[str], int]]) -> dict[str, WakeRoster]:
    rosters = {}
    for name, (types, _capacity) in workers.items():
        roster = WakeRoster(name, types)
        roster.replace([(w, sorted(t), c) for w, (t, c) in workers.items()])
        assert roster.capacity == workers[name][1]
        rosters[name] = roster
    return rosters


def test_the_jobs_are_covered_by_the_workers_whose_turn_it_is_and_again_by_spares() -> None:
    chance = random.Random(7)
    for _ in range(500):
        workers = {
            f"w{i}": ({"t"} if chance.random() < 0.8 else {"u"}, chance.randint(1, 6))
            for i in range(chance.randint(1, 12))
        }
        rosters = views_agreeing(workers)
        count, first_id = chance.randint(1, 20), chance.getrandbits(63)
        hint = InsertHint(count, first_id, first_id + count, None, "t")
        turns = {w: rosters[w].turn(hint) for w in workers}
        woken = [w for w in turn_order(first_id, workers) if turns[w].claims]
        order = [w for w in turn_order(first_id, workers) if "t" in workers[w][0]]
        # The first workers in turn order whose capacities cover the jobs, then the
        # shortest run after them that covers them again.
        end = 0
        for _round in range(COVER_ROUNDS):
            taken = 0
            while end < len(order) and taken < count:
                taken += workers[order[end]][1]
                end += 1
        assert woken == order[:end]
        # The last of them, and whether any worker was left out.
        last = [w for w in workers if turns[w].last]
        assert last == ([order[end - 1]] if taken >= count else [])
        assert all(turns[w].others_left == (end < len(order)) for w in woken)


def test_a_worker_missing_from_the_others_rosters_only_adds_claims() -> None:
    chance = random.Random(11)
    for _ in range(300):
        workers = {f"w{i}": ({"t"}, chance.randint(1, 4)) for i in range(chance.randint(2, 10))}
        rosters = views_agreeing(workers)
        newcomer = chance.choice(sorted(workers))
        for name, roster in rosters.items():
            if name != newcomer:
                roster.drop(newcomer)  # not yet read by the others
        first_id = chance.getrandbits(63)
        hint = InsertHint(chance.randint(1, 8), first_id, first_id, None, "t")
        agreed = views_agreeing(workers)
        should = {w for w in workers if agreed[w].my_turn(hint)}
        woken = {w for w in workers if rosters[w].my_turn(hint)}
        assert should <= woken


async def _true(value: bool) -> bool:
    return value
