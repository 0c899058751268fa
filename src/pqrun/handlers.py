"""What a handler is, what it receives, and how one is called."""

from __future__ import annotations

import asyncio
import inspect
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ._payloads import is_model_class, model_from_signature, validate
from .errors import Fail, PayloadInvalid
from .models import Job

if TYPE_CHECKING:
    from .store import PgJobStore

#: ``async def handler(ctx) -> result`` (or a plain ``def``, which runs in a thread); with
#: a payload model, ``async def handler(ctx, payload: Model)``.
HandlerFunc = Callable[..., Awaitable[Any]] | Callable[..., Any]

LAST_ERROR_LIMIT = 8000


_JOB_PAYLOAD: Any = object()  # JobContext.payload not given: the job's own


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a handler gets: the job, the store (to enqueue follow-up jobs), the worker id.

    ``payload`` is the job's payload: the validated model instance when the handler
    declares a payload model, else the decoded JSON (the same as ``job.payload``).
    """

    job: Job
    store: PgJobStore
    worker_id: str
    payload: Any = _JOB_PAYLOAD

    def __post_init__(self) -> None:
        if self.payload is _JOB_PAYLOAD:
            object.__setattr__(self, "payload", self.job.payload)

    @property
    def attempt(self) -> int:
        """1 on the first run of this job, 2 on the second, and so on."""
        return self.job.attempts

    async def dependencies(self) -> list[Job]:
        """The jobs this one depends on (its ``depends_on``), in id order, with their
        ``result``s: one query. Empty for a job that depends on none."""
        return await self.store.dependency_jobs(self.job.id)


_new_object = object.__new__
# The slots' descriptors (looked up by name: mypy sees dataclass fields, not slots).
_set_job, _set_store, _set_worker_id, _set_payload = (
    getattr(JobContext, name).__set__ for name in ("job", "store", "worker_id", "payload")
)


def context_for(job: Job, store: PgJobStore, worker_id: str) -> JobContext:
    """``JobContext(job=job, store=store, worker_id=worker_id)``, as a worker makes one per
    run: set through the slots, without the frozen ``__init__``'s keyword parsing and
    ``object.__setattr__`` calls (a third of the cost)."""
    ctx = _new_object(JobContext)
    _set_job(ctx, job)
    _set_store(ctx, store)
    _set_worker_id(ctx, worker_id)
    _set_payload(ctx, job.payload)
    return ctx


@dataclass(frozen=True, slots=True)
class Handler:
    """A handler function with its per-job-type settings.

    ``handlers={"x": fn}`` and ``handlers={"x": Handler(fn)}`` are the same. The limits
    hold across every worker on the database (docs/flow-control.md):

    - ``concurrency_limit``: at most this many jobs of the type RUNNING at once;
    - ``concurrency_limit_per_key``: at most this many RUNNING at once with the same
      ``concurrency_key`` (given at enqueue; jobs without one share one key);
    - ``rate_limit``: at most this many jobs of the type started per ``rate_period``
      (default one second).

    ``payload_model`` (a Pydantic model class) validates the payload before the run; the
    handler gets the model in ``ctx.payload``, and as its second argument if it takes
    one. ``async def handler(ctx, payload: EmailArgs)`` declares the model by annotation.
    An invalid payload fails the job at once, with the validation errors in last_error.
    """

    func: HandlerFunc
    concurrency_limit: int | None = None
    concurrency_limit_per_key: int | None = None
    rate_limit: int | None = None
    rate_period: timedelta | float = timedelta(seconds=1)
    payload_model: type[Any] | None = None
    #: True for an ``async def`` (or an object with an async ``__call__``).
    is_async: bool = field(init=False)
    #: True when the handler takes the payload model as its second argument.
    passes_payload: bool = field(init=False)

    def __post_init__(self) -> None:
        if not callable(self.func):
            raise TypeError(f"a handler must be callable, got {self.func!r}")
        is_async = inspect.iscoroutinefunction(self.func) or inspect.iscoroutinefunction(
            getattr(self.func, "__call__", None)  # noqa: B004 - an object with async __call__
        )
        object.__setattr__(self, "is_async", is_async)
        for name in ("concurrency_limit", "concurrency_limit_per_key", "rate_limit"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"Handler({name}=...) must be an int >= 1 or None, got {value!r}")
        period = self.rate_period
        if isinstance(period, int | float) and not isinstance(period, bool):
            period = timedelta(seconds=period)
        if not isinstance(period, timedelta) or period <= timedelta(0):
            raise ValueError(
                f"Handler(rate_period=...) must be a positive timedelta or seconds, "
                f"got {self.rate_period!r}"
            )
        object.__setattr__(self, "rate_period", period)
        declared = model_from_signature(self.func)
        if self.payload_model is not None and not is_model_class(self.payload_model):
            raise TypeError(
                f"Handler(payload_model=...) must be a Pydantic model class, got "
                f"{self.payload_model!r}"
            )
        if self.payload_model is None and declared is not None:
            object.__setattr__(self, "payload_model", declared)
        passes = declared is not None or (
            self.payload_model is not None and _positional_parameters(self.func) >= 2
        )
        object.__setattr__(self, "passes_payload", passes)

    @property
    def is_limited(self) -> bool:
        """True when a limit applies: claims of this type then go one worker at a time."""
        return (
            self.concurrency_limit is not None
            or self.concurrency_limit_per_key is not None
            or self.rate_limit is not None
        )

    async def __call__(self, ctx: JobContext) -> Any:
        """Run the handler: awaited if async, in a worker thread if a plain function.

        With a payload model, the payload is validated first; an invalid one raises
        Fail, so the job fails at once.
        """
        args: tuple[Any, ...] = (ctx,)
        if self.payload_model is not None:
            try:
                model = validate(self.payload_model, ctx.job.payload, ctx.job.job_type)
            except PayloadInvalid as exc:
                raise Fail(str(exc)) from exc
            ctx = replace(ctx, payload=model)
            args = (ctx, model) if self.passes_payload else (ctx,)
        if self.is_async:
            return await self.func(*args)
        result = await asyncio.to_thread(self.func, *args)
        if inspect.isawaitable(result):
            result = await result
        return result


def handler(
    *,
    concurrency_limit: int | None = None,
    concurrency_limit_per_key: int | None = None,
    rate_limit: int | None = None,
    rate_period: timedelta | float = timedelta(seconds=1),
    payload_model: type[Any] | None = None,
) -> Callable[[HandlerFunc], Handler]:
    """Decorator form of Handler: ``@handler(concurrency_limit=5)`` above ``async def``.

    The decorated name is a Handler, which goes into ``handlers={...}`` as it is and can
    still be called with a JobContext in tests.
    """

    def wrap(func: HandlerFunc) -> Handler:
        return Handler(
            func,
            concurrency_limit=concurrency_limit,
            concurrency_limit_per_key=concurrency_limit_per_key,
            rate_limit=rate_limit,
            rate_period=rate_period,
            payload_model=payload_model,
        )

    return wrap


def _positional_parameters(func: Callable[..., Any]) -> int:
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return 1
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return 2
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in parameters if p.kind in positional)


#: The mapping a Worker takes: job type -> handler function or Handler.
Handlers = Mapping[str, HandlerFunc | Handler]


def as_handlers(handlers: Handlers, *, allow_empty: bool = False) -> dict[str, Handler]:
    """Check a handlers mapping and wrap every entry in a Handler."""
    if not isinstance(handlers, Mapping) or not (handlers or allow_empty):
        raise ValueError(
            "Worker needs handlers: a non-empty dict of job type -> handler, "
            'e.g. handlers={"send_email": send_email}'
        )
    checked: dict[str, Handler] = {}
    for job_type, handler in handlers.items():
        if not isinstance(job_type, str) or not job_type:
            raise ValueError(f"handler keys must be non-empty job type strings, got {job_type!r}")
        if isinstance(handler, Handler):
            checked[job_type] = handler
        elif callable(handler):
            checked[job_type] = Handler(handler)
        else:
            raise TypeError(
                f"the handler for job type {job_type!r} is not callable: {handler!r}; "
                "give an `async def handler(ctx)` or a plain function"
            )
    return checked


def describe_exception(exc: BaseException) -> str:
    """``Type: message`` first, then the end of the traceback (where the error was raised).

    Kept under LAST_ERROR_LIMIT characters by cutting the start of the traceback.
    """
    try:
        headline = f"{type(exc).__qualname__}: {exc}"
        trace = "".join(traceback.format_exception(exc))
    except Exception:  # an exception whose __str__ itself raises
        return f"{type(exc).__qualname__} (its message could not be read)"
    room = LAST_ERROR_LIMIT - len(headline) - 2
    if room <= 0:
        return headline[:LAST_ERROR_LIMIT]
    if len(trace) > room:
        trace = "...\n" + trace[-(room - 4) :]
    return f"{headline}\n\n{trace}"
