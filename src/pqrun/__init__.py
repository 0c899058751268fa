"""pqrun: a PostgreSQL job queue for async Python.

store = PgJobStore(dsn)
worker = Worker(store=store, handlers={"send_email": send_email})
app = FastAPI(lifespan=worker.lifespan)
job_id = await store.enqueue("send_email", {"to": "a@example.com"})
"""

from .errors import (
    DatabaseUnavailable,
    Fail,
    JobConflict,
    JobNotFound,
    PayloadInvalid,
    PqrunError,
    Retry,
    SchemaMissing,
    Snooze,
    UnknownJobType,
    WaitTimeout,
)
from .handlers import Handler, HandlerFunc, Handlers, JobContext, handler
from .models import Job, JobStatus, RawJSON
from .policies import BackoffPolicy, IdlePollPolicy, LoopErrorPolicy
from .schedules import Schedule
from .schema import ddl_sql
from .store import PgJobStore
from .worker import Worker

__version__ = "0.1.0"

__all__ = [
    "BackoffPolicy",
    "DatabaseUnavailable",
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
    "PqrunError",
    "RawJSON",
    "Retry",
    "Schedule",
    "SchemaMissing",
    "Snooze",
    "UnknownJobType",
    "WaitTimeout",
    "Worker",
    "__version__",
    "ddl_sql",
    "handler",
]
