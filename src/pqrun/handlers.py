"""What a handler is, what it receives, and how one is called."""

from __future__ import annotations

import asyncio
import inspect
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .models import Job

if TYPE_CHECKING:
    from .store import PgJobStore

#: ``async def handler(ctx) -> result`` (or a plain ``def``, which runs in a thread).
HandlerFunc = Callable[["JobContext"], Awaitable[Any]] | Callable[["JobContext"], Any]

LAST_ERROR_LIMIT = 8000


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a handler gets: the job, the store (to enqueue follow-up jobs), the worker id."""

    job: Job
    store: PgJobStore
    worker_id: str

    @property
    def attempt(self) -> int:
        """1 on the first run of this job, 2 on the second, and so on."""
        return self.job.attempts


@dataclass(frozen=True, slots=True)
class Handler:
    """A handler function with its per-job-type settings.

    ``handlers={"x": fn}`` and ``handlers={"x": Handler(fn)}`` are the same.
    """

    func: HandlerFunc
    #: True for an ``async def`` (or an object with an async ``__call__``).
    is_async: bool = field(init=False)

    def __post_init__(self) -> None:
        if not callable(self.func):
            raise TypeError(f"a handler must be callable, got {self.func!r}")
        is_async = inspect.iscoroutinefunction(self.func) or inspect.iscoroutinefunction(
            getattr(self.func, "__call__", None)  # noqa: B004 - an object with async __call__
        )
        object.__setattr__(self, "is_async", is_async)

    async def __call__(self, ctx: JobContext) -> Any:
        """Run the handler: awaited if async, in a worker thread if a plain function."""
        if self.is_async:
            return await self.func(ctx)
        result = await asyncio.to_thread(self.func, ctx)
        if inspect.isawaitable(result):
            result = await result
        return result


#: The mapping a Worker takes: job type -> handler function or Handler.
Handlers = Mapping[str, HandlerFunc | Handler]


def as_handlers(handlers: Handlers) -> dict[str, Handler]:
    """Check a handlers mapping and wrap every entry in a Handler."""
    if not isinstance(handlers, Mapping) or not handlers:
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
