"""Handlers shared by the FastAPI example and the worker-only example."""

from __future__ import annotations

from typing import Any

from pqrun import Fail, Handlers, JobContext


async def summarize(ctx: JobContext) -> dict[str, Any]:
    """Summarize a conversation, then chain an embedding job for the summary."""
    conversation_id = ctx.job.payload["conversation_id"]
    summary = f"summary of conversation {conversation_id}"
    # Chaining: the follow-up job is enqueued from inside the handler. The dedupe key
    # keeps a retried summarize from queueing a second embed while the first is active.
    embed_id = await ctx.store.enqueue(
        "embed", {"text": summary}, dedupe_key=f"embed:conv:{conversation_id}"
    )
    return {"summary": summary, "embed_job": embed_id}


async def embed(ctx: JobContext) -> dict[str, Any]:
    text: str = ctx.job.payload["text"]
    return {"dimensions": 3, "vector": [len(text), text.count(" "), text.count("o")]}


async def send_email(ctx: JobContext) -> dict[str, Any]:
    """Record the email and queue its audit entry in one transaction: both or neither."""
    address = ctx.job.payload.get("to")
    if not address or "@" not in address:
        raise Fail(f"cannot send to {address!r}")  # retrying would not help
    async with ctx.store.transaction() as conn:
        sent_at = await conn.fetchval("SELECT now()")
        await ctx.store.enqueue("audit", {"event": "email_sent", "to": address})
    return {"to": address, "sent_at": sent_at.isoformat()}


def audit(ctx: JobContext) -> str:
    """A plain function: pqrun runs it in a thread, so blocking I/O here is fine."""
    return f"audited {ctx.job.payload['event']}"


HANDLERS: Handlers = {
    "summarize": summarize,
    "embed": embed,
    "send_email": send_email,
    "audit": audit,
}
