"""pqrun: a PostgreSQL job queue for async Python.

store = PgJobStore(dsn)
worker = Worker(store=store, handlers={"send_email": send_email})
app = FastAPI(lifespan=worker.lifespan)
job_id = await store.enqueue("send_email", {"to": "a@example.com"})
"""

from typing import TYPE_CHECKING, Any

from .errors import (
    DatabaseUnavailable,
    Fail,
    JobConflict,
    JobNotFound,
    NotPermitted,
    PayloadInvalid,
    PqrunError,
    Retry,
    SchemaMissing,
    Snooze,
    UnknownJobType,
    WaitTimeout,
)
from .handlers import Handler, HandlerFunc, Handlers, JobContext, handler
from .models import AttemptError, Earlier, Job, JobStatus, RawJSON
from .policies import BackoffPolicy, IdlePollPolicy, LoopErrorPolicy
from .schedules import Schedule
from .schema import ddl_sql
from .store import PgJobStore
from .worker import Worker, WorkerStore

if TYPE_CHECKING:
    from .metrics import metrics_app as metrics_app
    from .webui import dashboard as dashboard

__version__ = "0.1.0"

__all__ = [
    "AttemptError",
    "BackoffPolicy",
    "DatabaseUnavailable",
    "Earlier",
    "Fail",
    "Handler",
    "HandlerFunc",
    "Handlers",
    "IdlePollPolicy",
    "Job",
    "JobConflict",
    "JobContext",
    "JobNotFound",
    "JobStatus",
    "LoopErrorPolicy",
    "PayloadInvalid",
    "PgJobStore",
    "NotPermitted",
    "PqrunError",
    "RawJSON",
    "Retry",
    "Schedule",
    "SchemaMissing",
    "Snooze",
    "UnknownJobType",
    "WaitTimeout",
    "Worker",
    "WorkerStore",
    "__version__",
    "ddl_sql",
    "handler",
]
# Not in __all__: pqrun.dashboard and pqrun.metrics_app need optional extras, and a
# star import must not fail without them.


def __getattr__(name: str) -> Any:
    # The dashboard and the metrics need optional extras: imported on first use only.
    if name == "dashboard":
        from .webui import dashboard

        return dashboard
    if name == "metrics_app":
        from .metrics import metrics_app

        return metrics_app
    raise AttributeError(f"module 'pqrun' has no attribute {name!r}")
