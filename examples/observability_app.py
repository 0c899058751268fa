"""A FastAPI app with pqrun's metrics, traces and dashboard.

    pip install 'pqrun[metrics,tracing,web]' opentelemetry-sdk
    DATABASE_URL=postgresql://user@host/db DASHBOARD_PASSWORD=... \\
        uvicorn examples.observability_app:app

- GET /metrics: Prometheus metrics of this process's store and worker.
- /jobs/: the dashboard, behind HTTP basic auth (user "admin"), with retry and cancel.
- Traces: with the OpenTelemetry SDK configured (here, spans printed to the console when
  OTEL_CONSOLE=1), POST /emails's span is the parent of the job's enqueue, and the run
  of the job continues the same trace.
"""

from __future__ import annotations

import base64
import hmac
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI

import pqrun
from examples.handlers import HANDLERS
from pqrun import PgJobStore, Worker

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def require_basic_auth(app: ASGIApp, user: str, password: str) -> ASGIApp:
    """Let through only requests with this user and password (HTTP basic auth).

    The dashboard has no login of its own: put yours in front of it. Over HTTPS only.
    """
    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            if not password or not hmac.compare_digest(given, expected):
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [(b"www-authenticate", b'Basic realm="jobs"')],
                    }
                )
                await send({"type": "http.response.body", "body": b"login required\n"})
                return
        await app(scope, receive, send)

    return guarded


if os.environ.get("OTEL_CONSOLE") == "1":  # any OpenTelemetry SDK setup works the same
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)

store = PgJobStore()  # the DSN comes from PQRUN_DSN or DATABASE_URL
worker = Worker(store=store, handlers=HANDLERS)
app = FastAPI(lifespan=worker.lifespan)
app.mount("/metrics", pqrun.metrics_app(store))
app.mount(
    "/jobs",
    require_basic_auth(
        pqrun.dashboard(store, allow_actions=True),
        user="admin",
        password=os.environ.get("DASHBOARD_PASSWORD", ""),
    ),
)


@app.post("/emails")
async def queue_email(to: str) -> dict[str, int]:
    return {"job_id": await store.enqueue("send_email", {"to": to}, max_attempts=3)}
