"""The dashboard's table of the stored schedules (on the overview)."""

from __future__ import annotations

from typing import Any

from pqrun._ui.web_html import every_text, h, job_link, table_html, when_html


def schedules_table(base: str, schedules: list[dict[str, Any]]) -> str:
    """One row per stored schedule: its timing, next and last run, and its last job."""
    schedule_rows = [
        f"<tr><td>{h(s.get('name'))}</td><td>{h(s.get('job_type'))}</td>"
        f"<td>{h(every_text(s))}</td><td>{h(s.get('timezone'))}</td>"
        f"<td>{when_html(s.get('next_run_at'))}</td><td>{when_html(s.get('last_run_at'))}</td>"
        f"<td>{job_link(base, s.get('last_job_id'))}</td></tr>"
        for s in schedules
    ]
    return table_html(
        ["schedule", "job type", "runs", "timezone", "next run", "last run", "last job"],
        schedule_rows,
        "No schedules.",
    )
