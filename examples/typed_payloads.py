"""Typed payloads: a Pydantic model per job type (pip install 'pqrun[pydantic]').

    DATABASE_URL=postgresql://user@host/db python -m examples.typed_payloads

The handler declares the model on its second argument and gets it validated. Once a
worker knows the model, ``store.enqueue`` checks dicts too and refuses bad ones before
anything is written; a bad payload that arrives another way (SQL, an older app) fails
its job at once, with the validation errors in last_error.
"""

from __future__ import annotations

import asyncio
import logging

from pydantic import BaseModel, Field

from pqrun import JobContext, PayloadInvalid, PgJobStore, Worker


class EmailArgs(BaseModel):
    to: str = Field(pattern=r".+@.+")
    subject: str
    body: str = ""


async def send_email(ctx: JobContext, email: EmailArgs) -> str:
    return f"sent {email.subject!r} to {email.to}"


async def main() -> None:
    async with PgJobStore() as store:  # the DSN comes from PQRUN_DSN or DATABASE_URL
        worker = Worker(store=store, handlers={"send_email": send_email})
        job_id = await store.enqueue("send_email", EmailArgs(to="ada@example.com", subject="Hi"))
        try:
            await store.enqueue("send_email", {"to": "nobody"})
        except PayloadInvalid as exc:
            print(f"refused: {exc}")
        await worker.drain()
        job = await store.get_job(job_id)
        print(job.result if job else None)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(main())
