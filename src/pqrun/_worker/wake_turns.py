"""Whose turn it is to claim newly inserted jobs, so that one job does not wake every worker.

The insert trigger's notification names the job type, how many jobs the statement
inserted and their ids ('jobs:<count>:<first id>:<last id>:<due>:<type>', ddl.sql). Every
worker hears it. Each ranks the live workers of that type (its roster, read from
job_workers every few seconds) by a hash of the first id and its worker_id, the same
ranking on every worker; the first few, with room for the jobs twice over, claim; the
others let it be. "Room" counts each worker's wake capacity from its last heartbeat:
what one claim of it takes (its slots and its prefetch). Which worker comes first
changes from one insert to the next, so the work spreads over them.

Rosters differ for a moment when a worker starts or stops. A worker that just started is
in its own roster, not yet in the others': it may claim when they think it is not its
turn, never the reverse, so a new worker costs at most a claim. A worker that is gone
but still listed, until its row is removed ('left:<id>' when it stops) or its heartbeats
grow old (a crash), may be the one named: the spares claim then. A worker named may also
be busier than its capacity said, or take other jobs first. So, when some workers of the
type were not woken, the last one named, and any named one without room for all the
jobs, reads a moment later whether one of them is still READY and due, and if so wakes
every worker (an empty notification), unless one was heard meanwhile (listener.py).
Workers that do not listen (``listen=False``, or behind a pooler without
``direct_dsn``) report a wake capacity of 0 and are not ranked.

All of this is a hint: anyone who can NOTIFY can send one, and all it can do is make some
worker claim (docs/security.md); the idle poll still looks for due jobs now and then.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# The jobs of a hint are covered this many times over: by the workers whose turn it is
# and by as many spares after them, so that a worker that is gone but still listed, or
# busier than its capacity says, does not leave them to the idle poll.
COVER_ROUNDS = 2
# How long after a hint the last worker whose turn it was looks for jobs left behind
# (seconds): time for the others' claims to go first. It looks at most this often.
CHECK_AFTER_SECONDS = 0.05
# The most a payload may claim to have inserted; more is read as this.
MAX_COUNT = 1 << 31
# A check for jobs left behind reads at most this many ids from a hint's first one.
MAX_CHECKED_IDS = 100_000
# The largest id a job can have (bigint).
MAX_ID = (1 << 63) - 1

_MASK = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class InsertHint:
    """A parsed 'jobs:...' notification: ``count`` jobs of ``job_type`` were inserted,
    with ids from ``first_id`` to ``last_id`` (other inserts' ids may fall between), the
    first due at ``due`` (epoch seconds by the database's clock; None: due now)."""

    count: int
    first_id: int
    last_id: int
    due: float | None
    job_type: str

    @classmethod
    def parse(cls, payload: str) -> InsertHint | None:
        """The hint in ``payload``, or None if it is not a well-formed one."""
        parts = payload.split(":", 5)
        if len(parts) != 6 or parts[0] != "jobs" or not parts[5]:
            return None
        try:
            count, first_id, last_id = int(parts[1]), int(parts[2]), int(parts[3])
            due = float(parts[4]) if parts[4] else None
        except (ValueError, OverflowError):
            return None
        if count < 1 or not 0 <= first_id <= last_id <= MAX_ID:
            return None
        if due is not None and not math.isfinite(due):
            return None
        last_id = min(last_id, first_id + MAX_CHECKED_IDS)
        return cls(min(count, MAX_COUNT), first_id, last_id, due, parts[5])

    def now_due(self) -> InsertHint:
        """The same hint, once its jobs are due."""
        return InsertHint(self.count, self.first_id, self.last_id, None, self.job_type)


def _key(worker_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(worker_id.encode(), digest_size=8).digest(), "big")


def _score(first_id: int, key: int) -> int:
    """A 64-bit mix (splitmix64) of the hint and a worker's key: the worker's place."""
    z = ((first_id * 0x9E3779B97F4A7C15) ^ key) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def turn_order(first_id: int, worker_ids: Iterable[str]) -> list[str]:
    """The workers ranked for a hint whose first job id is ``first_id``, first turn first."""
    return sorted(worker_ids, key=lambda w: _score(first_id, _key(w)), reverse=True)


@dataclass(frozen=True, slots=True)
class Turn:
    """What a hint asks of a worker: whether it ``claims`` the jobs, whether it is the
    ``last`` of those that claim, and whether ``others_left`` workers of that type were
    not woken (then a check for jobs left behind can wake them)."""

    claims: bool
    last: bool = False
    others_left: bool = False


NOT_MY_TURN = Turn(claims=False)


@dataclass(slots=True)
class _Peer:
    key: int
    job_types: frozenset[str]
    capacity: int


class WakeRoster:
    """The live workers as this worker last read them, and whose turn a hint is."""

    def __init__(self, worker_id: str, job_types: Iterable[str]) -> None:
        self._worker_id = worker_id
        self._key = _key(worker_id)
        self._job_types = frozenset(job_types)
        self._peers: dict[str, _Peer] = {}
        #: False until the first read: until then every hint is this worker's turn.
        self.loaded = False
        #: How many times the roster was read.
        self.reads = 0
        #: This worker's wake capacity as the others read it.
        self.capacity = 1

    def __len__(self) -> int:
        """How many live workers this worker knows of, itself included."""
        return len(self._peers) + 1

    def handles(self, job_type: str) -> bool:
        return job_type in self._job_types

    def others_handle(self, job_type: str) -> bool:
        """Whether another live, listening worker takes jobs of this type."""
        return any(job_type in peer.job_types for peer in self._peers.values())

    def replace(self, rows: Sequence[tuple[str, Sequence[str], int]]) -> None:
        """The live workers (worker_id, job types, wake capacity), as read from
        job_workers (this worker is always one, whatever they say)."""
        peers = {}
        for worker_id, job_types, capacity in rows:
            if worker_id == self._worker_id:
                self.capacity = max(int(capacity), 1)
            else:
                old = self._peers.get(worker_id)
                key = old.key if old is not None else _key(worker_id)
                peers[worker_id] = _Peer(key, frozenset(job_types), max(int(capacity), 1))
        self._peers = peers
        self.loaded = True
        self.reads += 1

    def drop(self, worker_id: str) -> None:
        """``worker_id`` left (a hint: it may be wrong, and then one more worker claims)."""
        self._peers.pop(worker_id, None)

    def turn(self, hint: InsertHint) -> Turn:
        """What this worker does for ``hint``.

        The workers of the hint's type, ranked by score: the shortest run from the top
        whose wake capacities add up to the jobs inserted claim, and, as spares, the
        shortest run after it that adds up to them again (COVER_ROUNDS). Until the
        roster is read, every hint of a handled type is this worker's, as the last.
        """
        if not self.handles(hint.job_type):
            return NOT_MY_TURN
        if not self.loaded:
            return Turn(claims=True, last=True, others_left=True)
        first_id, job_type, count = hint.first_id, hint.job_type, hint.count
        mine = _score(first_id, self._key)
        ahead: list[tuple[int, int]] = []
        behind: list[tuple[int, int]] = []
        for peer in self._peers.values():
            if job_type in peer.job_types:
                score = _score(first_id, peer.key)
                (ahead if score > mine else behind).append((score, peer.capacity))
        if len(ahead) >= COVER_ROUNDS * count:
            return NOT_MY_TURN  # each worker takes one job at least: covered before it
        ahead.sort(reverse=True)
        rounds, taken = 0, 0
        for _, capacity in ahead:
            taken += capacity
            if taken >= count:
                rounds, taken = rounds + 1, 0
                if rounds == COVER_ROUNDS:
                    return NOT_MY_TURN
        taken += self.capacity
        if taken >= count:
            rounds, taken = rounds + 1, 0
            if rounds == COVER_ROUNDS:
                return Turn(claims=True, last=True, others_left=bool(behind))
        # Named, not the last: is any worker after the last one named left out?
        behind.sort(reverse=True)
        for place, (_, capacity) in enumerate(behind):
            taken += capacity
            if taken >= count:
                rounds, taken = rounds + 1, 0
                if rounds == COVER_ROUNDS:
                    return Turn(claims=True, others_left=place < len(behind) - 1)
        return Turn(claims=True)

    def my_turn(self, hint: InsertHint) -> bool:
        """True if this worker claims for ``hint``."""
        return self.turn(hint).claims
