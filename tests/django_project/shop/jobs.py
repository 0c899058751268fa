"""The test project's handlers: a plain one that uses the ORM in the worker's threads."""

from __future__ import annotations

from typing import Any

from django.db import connection

from pqrun import JobContext

from .models import Receipt


def record(ctx: JobContext) -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone() or (0,)
    Receipt.objects.create(job_id=ctx.job.id, backend_pid=pid)
    return {"backend_pid": pid}


async def hello(ctx: JobContext) -> str:
    return f"hello {ctx.payload}"


handlers = {"shop.record": record, "shop.hello": hello}
