"""An endpoint that enqueues a job and answers with its result: store.wait().

    DATABASE_URL=postgresql://user@host/db uvicorn examples.wait_for_result:app

The request waits for the job (woken by a notification when it finishes, however many
requests wait at once), or answers 202 with the job id if it takes longer than 10 s.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from pqrun import JobContext, PgJobStore, WaitTimeout, Worker


async def render_thumbnail(ctx: JobContext) -> dict[str, Any]:
    await asyncio.sleep(0.05)  # the slow part
    return {"image": ctx.payload["image"], "thumbnail": f"thumbs/{ctx.payload['image']}"}


store = PgJobStore()  # the DSN comes from PQRUN_DSN or DATABASE_URL
worker = Worker(store=store, handlers={"render_thumbnail": render_thumbnail}, concurrency=4)
app = FastAPI(lifespan=worker.lifespan)


@app.post("/thumbnails/{image}")
async def thumbnail(image: str) -> JSONResponse:
    job_id = await store.enqueue("render_thumbnail", {"image": image})
    try:
        job = await store.wait(job_id, timeout=10)
    except WaitTimeout:
        return JSONResponse({"job_id": job_id, "status": "pending"}, status_code=202)
    if job.status != "DONE":
        return JSONResponse({"job_id": job_id, "error": job.last_error}, status_code=500)
    return JSONResponse({"job_id": job_id, **job.result})
