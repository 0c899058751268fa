"""examples/observability_app.py: metrics and a password-protected dashboard in FastAPI."""

from __future__ import annotations

import asyncio
import importlib
import sys
import time
from collections.abc import Iterator
from types import ModuleType

import pytest
from fastapi.testclient import TestClient

from .conftest import reset_jobs


@pytest.fixture
def example(dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    asyncio.run(reset_jobs(dsn))
    monkeypatch.setenv("DATABASE_URL", dsn)
    monkeypatch.setenv("WORKER_REAPER_ENABLED", "false")
    monkeypatch.setenv("DASHBOARD_PASSWORD", "s3cret")
    sys.modules.pop("examples.observability_app", None)
    # Metrics in a registry of this test's, not the process-wide default one.
    from prometheus_client import CollectorRegistry

    from pqrun import metrics

    monkeypatch.setattr(metrics, "_default", metrics.PrometheusMetrics(CollectorRegistry()))
    yield importlib.import_module("examples.observability_app")
    sys.modules.pop("examples.observability_app", None)


def test_metrics_and_a_protected_dashboard(example: ModuleType) -> None:
    with TestClient(example.app) as client:
        job_id = client.post("/emails", params={"to": "a@example.com"}).json()["job_id"]
        assert client.get("/jobs/").status_code == 401
        assert client.get("/jobs/", auth=("admin", "wrong")).status_code == 401
        deadline = time.monotonic() + 60
        while True:
            page = client.get(f"/jobs/jobs/{job_id}", auth=("admin", "s3cret"))
            assert page.status_code == 200
            if 'data-status="DONE"' in page.text:
                break
            assert time.monotonic() < deadline, "the job did not run"
            time.sleep(0.05)
        scraped = client.get("/metrics/").text
    assert 'pqrun_jobs_enqueued_total{job_type="send_email"} 1.0' in scraped
    assert 'pqrun_jobs_finished_total{job_type="send_email",outcome="done"} 1.0' in scraped
