"""A FastAPI app that enqueues jobs and runs a worker in the same process.

    DATABASE_URL=postgresql://user@host/db uvicorn examples.fastapi_app:app

Set WORKER_ENABLED=false to run it as an API only, with workers elsewhere
(python -m examples.worker_only).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import FastAPI, HTTPException

from examples.handlers import HANDLERS
from pqrun import PgJobStore, Worker

store = PgJobStore()  # the DSN comes from PQRUN_DSN or DATABASE_URL
worker = Worker(store=store, handlers=HANDLERS)
app = FastAPI(lifespan=worker.lifespan)


@app.post("/summarize/{conversation_id}")
async def create_summary(conversation_id: int) -> dict[str, int]:
    # One active summarize job per conversation, however often this is called.
    job_id = await store.enqueue(
        job_type="summarize",
        payload={"conversation_id": conversation_id},
        dedupe_key=f"summarize:conv:{conversation_id}",
    )
    return {"job_id": job_id}


@app.post("/emails")
async def queue_email(to: str, delay_seconds: int = 0, priority: int = 0) -> dict[str, int]:
    job_id = await store.enqueue(
        "send_email",
        {"to": to},
        priority=priority,
        run_after=timedelta(seconds=delay_seconds),
        max_attempts=3,
    )
    return {"job_id": job_id}


@app.get("/jobs/{job_id}")
async def job_status(job_id: int) -> dict[str, Any]:
    job = await store.get_job(job_id)
    if job is None:
        raise HTTPException(status_code=404, detail=f"no job {job_id}")
    return {
        "id": job.id,
        "job_type": job.job_type,
        "status": job.status,
        "attempts": job.attempts,
        "result": job.result,
        "last_error": job.last_error,
    }


@app.post("/jobs/{job_id}/cancel")
async def cancel_job(job_id: int) -> dict[str, bool]:
    return {"cancelled": await store.cancel(job_id)}
