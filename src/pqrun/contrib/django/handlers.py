"""Handlers that use Django's ORM from a worker.

A plain ``def`` handler runs in a thread of the worker's pool, and Django keeps one
database connection per thread: nothing closes it after a job as the end of a request
does, so it outlives CONN_MAX_AGE, and after a database restart or a failed statement it
stays broken for every later job of that thread. ``django_handler`` does for each job
what Django does for each request: ``close_old_connections()`` before and after.
``manage.py pqrun worker`` applies it to every plain handler of the handlers dict.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, TypeVar, overload

from django.db import close_old_connections

from pqrun.handlers import Handler, HandlerFunc

F = TypeVar("F", bound=Callable[..., Any])

_MARK = "_pqrun_django_handler"


def _is_async(func: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004 - an object with async __call__
    )


@overload
def django_handler(func: Handler) -> Handler: ...
@overload
def django_handler(func: F) -> F: ...
def django_handler(func: Any) -> Any:
    """Wrap a plain (sync) handler so that each run starts and ends with
    ``django.db.close_old_connections()``: the ORM in it gets a usable connection, and
    one past CONN_MAX_AGE (0, Django's default: every time) is closed after the job.

    Takes a function or a ``pqrun.Handler`` (keeping its limits and payload model); use
    it under ``@handler(...)``. An ``async def`` handler is refused: call the ORM from it
    through ``asgiref.sync.sync_to_async`` (which runs such a wrapped function), or use
    Django's async ORM methods (docs/django.md).
    """
    if isinstance(func, Handler):
        if func.is_async:
            raise TypeError(_async_refusal(func.func))
        return replace(func, func=django_handler(func.func))
    if not callable(func):
        raise TypeError(f"django_handler wraps a handler function, got {func!r}")
    if _is_async(func):
        raise TypeError(_async_refusal(func))
    if getattr(func, _MARK, False):
        return func

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        close_old_connections()
        try:
            return func(*args, **kwargs)
        finally:
            close_old_connections()

    setattr(run, _MARK, True)
    return run


def django_handlers(handlers: Mapping[str, HandlerFunc | Handler]) -> dict[str, Any]:
    """``handlers`` with every plain handler wrapped by ``django_handler``; async ones as
    they are (they do not run in the worker's threads)."""
    wrapped: dict[str, Any] = {}
    for job_type, func in handlers.items():
        is_async = func.is_async if isinstance(func, Handler) else _is_async(func)
        wrapped[job_type] = func if is_async or not callable(func) else django_handler(func)
    return wrapped


def _async_refusal(func: Any) -> str:
    name = getattr(func, "__qualname__", repr(func))
    return (
        f"{name} is an async handler: django_handler is for plain (def) handlers, which "
        "run in threads. From async code call the ORM through "
        "asgiref.sync.sync_to_async(...) or Django's async methods (aget, acreate, ...)"
    )
