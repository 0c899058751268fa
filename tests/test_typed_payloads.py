"""Typed payloads: a Pydantic model per job type, validated on enqueue and before a run."""

from __future__ import annotations

import subprocess
import sys

import asyncpg
import pytest
from pydantic import BaseModel, Field

from pqrun import Handler, JobContext, JobStatus, PayloadInvalid, PgJobStore, Worker, handler

from .helpers import QUICK


class EmailArgs(BaseModel):
    to: str = Field(min_length=3)
    subject: str
    retries_allowed: int = 3


async def test_the_handler_gets_the_model_from_its_annotation(store: PgJobStore) -> None:
    seen: list[object] = []

    async def send_email(ctx: JobContext, payload: EmailArgs) -> str:
        seen.extend([payload, ctx.payload])
        return payload.to

    job_id = await store.enqueue("send_email", EmailArgs(to="a@example.com", subject="hi"))
    await Worker(store=store, handlers={"send_email": send_email}, **QUICK).drain()
    job = await store.get_job(job_id)
    assert job is not None
    assert job.status is JobStatus.DONE
    assert job.result == "a@example.com"
    assert job.payload == {"to": "a@example.com", "subject": "hi", "retries_allowed": 3}
    assert seen[0] == EmailArgs(to="a@example.com", subject="hi")
    assert seen[1] is seen[0]


async def test_payload_model_as_an_argument_and_in_a_plain_function(store: PgJobStore) -> None:
    def report(ctx: JobContext) -> int:  # runs in a thread
        assert isinstance(ctx.payload, EmailArgs)
        return ctx.payload.retries_allowed

    job_id = await store.enqueue("report", {"to": "b@example.com", "subject": "x"})
    worker = Worker(
        store=store, handlers={"report": Handler(report, payload_model=EmailArgs)}, **QUICK
    )
    await worker.drain()
    job = await store.get_job(job_id)
    assert job is not None
    assert job.result == 3


async def test_an_invalid_payload_fails_at_once_with_the_errors(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    ran: list[int] = []

    @handler(payload_model=EmailArgs)
    async def send_email(ctx: JobContext) -> None:
        ran.append(ctx.job.id)

    # Enqueued from SQL, where no model checks it.
    job_id = await conn.fetchval(
        "INSERT INTO jobs (job_type, payload, max_attempts) "
        """VALUES ('send_email', '{"to": "x", "retries_allowed": "many"}', 5) RETURNING id"""
    )
    await Worker(store=store, handlers={"send_email": send_email}, **QUICK).drain()
    job = await store.get_job(job_id)
    assert job is not None
    assert (job.status, job.attempts, ran) == (JobStatus.FAILED, 1, [])
    error = job.last_error or ""
    assert "not a valid EmailArgs" in error
    for field in ("to:", "subject:", "retries_allowed:"):
        assert field in error


async def test_enqueue_validates_dicts_once_the_model_is_known(
    store: PgJobStore, conn: asyncpg.Connection
) -> None:
    async def send_email(ctx: JobContext, payload: EmailArgs) -> None:
        return None

    # The worker tells its store the model of each job type it handles.
    Worker(store=store, handlers={"send_email": send_email}, **QUICK)
    with pytest.raises(PayloadInvalid, match="subject: Field required"):
        await store.enqueue("send_email", {"to": "c@example.com"})
    with pytest.raises(PayloadInvalid, match=r"(?s)enqueue_many item 1: .*to: String should have"):
        await store.enqueue_many(
            [
                {"job_type": "send_email", "payload": {"to": "ok@x", "subject": "s"}},
                {"job_type": "send_email", "payload": {"to": "", "subject": "s"}},
            ]
        )
    assert await conn.fetchval("SELECT count(*) FROM jobs") == 0
    job_id = await store.enqueue("send_email", {"to": "c@example.com", "subject": "s"})
    assert (
        await conn.fetchval("SELECT payload->>'subject' FROM jobs WHERE id = $1", job_id)
    ) == "s"
    # Other job types are not checked.
    await store.enqueue("anything", {"free": "form"})


def test_a_payload_model_must_be_a_model_class() -> None:
    async def fn(ctx: JobContext) -> None:
        return None

    with pytest.raises(TypeError, match="Pydantic model class"):
        Handler(fn, payload_model=dict)


def test_pqrun_needs_no_pydantic() -> None:
    # Pydantic is an optional extra: with it blocked, pqrun imports and runs handlers.
    code = (
        "import sys; sys.modules['pydantic'] = None\n"
        "from pqrun import Handler, JobContext, Worker, PgJobStore, Schedule\n"
        "async def fn(ctx: JobContext, other: int) -> None: ...\n"
        "h = Handler(fn)\n"
        "assert h.payload_model is None and not h.passes_payload\n"
        "Worker(PgJobStore('postgresql://unused'), {'x': h}, schedules=[Schedule('x', every=1)])\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.stdout.strip() == "ok", done.stderr


class Sender(BaseModel):
    sender: str = Field(alias="from")


async def test_models_with_aliases_and_other_models_round_trip(store: PgJobStore) -> None:
    async def reply(ctx: JobContext, payload: Sender) -> str:
        return payload.sender

    worker = Worker(store=store, handlers={"reply": reply}, **QUICK)
    job_id = await store.enqueue("reply", Sender.model_validate({"from": "ada@example.com"}))
    # Another model is checked as the JSON the handler will read.
    with pytest.raises(PayloadInvalid, match="from: Field required"):
        await store.enqueue("reply", EmailArgs(to="x@y", subject="s"))
    with pytest.raises(PayloadInvalid, match=r"(?s)enqueue_many item 0: .*from: Field required"):
        await store.enqueue_many([{"job_type": "reply"}])  # no payload is {} here
    await worker.drain()
    job = await store.get_job(job_id)
    assert job is not None
    assert job.result == "ada@example.com"
