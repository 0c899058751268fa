"""The dashboard's table of the registered workers (on the overview)."""

from __future__ import annotations

from typing import Any

from pqrun._ui.web_html import h, table_html, when_html


def workers_table(workers: list[dict[str, Any]]) -> str:
    """One row per registered worker: where it runs, what it takes, its last heartbeat."""
    worker_rows = [
        f"<tr><td>{h(w['worker_id'])}</td><td>{h(w['host'])}</td>"
        f'<td class="num">{h(w["pid"])}</td><td>{h(", ".join(w["job_types"]))}</td>'
        f'<td class="num">{h(w["busy"])} of {h(w["concurrency"])}</td>'
        f"<td>{when_html(w['started_at'])}</td>"
        f"<td>{when_html(w['heartbeat_at'])}</td></tr>"
        for w in workers
    ]
    return table_html(
        ["worker", "host", "#pid", "job types", "#busy slots", "started", "heartbeat"],
        worker_rows,
        "No worker is registered.",
    )
