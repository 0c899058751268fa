"""How ``pqrun worker`` writes its log lines: plain text, or one JSON object per line.

``--log-format json`` (or ``$PQRUN_LOG_FORMAT=json``) is for log pipelines: each record
becomes ``{"time", "level", "logger", "message"}``, plus the fields pqrun attaches to a
job's lines (``job_id``, ``job_type``, ``attempt``, ``duration_ms``, ``outcome``) and the
traceback as ``exception`` when there is one.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
#: The fields of a job's log lines (outcome.py's log_extra) copied into a JSON line.
JOB_FIELDS = ("job_id", "job_type", "attempt", "duration_ms", "outcome")
FORMATS = ("plain", "json")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in JOB_FIELDS:
            if field in record.__dict__:
                line[field] = record.__dict__[field]
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def configure_logging(level: str, log_format: str) -> None:
    """Send log records of ``level`` and above to stderr, as ``log_format`` says."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(PLAIN_FORMAT)
    )
    logging.basicConfig(level=level.upper(), handlers=[handler])
