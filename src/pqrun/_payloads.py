"""Typed payloads: a Pydantic model per job type, checked on enqueue and before a run.

Pydantic is optional: nothing here imports it. A model is any class with
``model_validate`` (a ``pydantic.BaseModel`` subclass).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

from .errors import PayloadInvalid

ERRORS_SHOWN = 20


def is_model_class(candidate: Any) -> bool:
    """True for a Pydantic model class (anything with ``model_validate``)."""
    return inspect.isclass(candidate) and callable(getattr(candidate, "model_validate", None))


def model_from_signature(func: Callable[..., Any]) -> type[Any] | None:
    """The model a handler asks for: ``async def handler(ctx, payload: EmailArgs)``."""
    target = func if inspect.isfunction(func) or inspect.ismethod(func) else None
    if target is None:
        target = getattr(func, "__call__", None)  # noqa: B004 - a callable object
        if target is None:
            return None
    try:
        parameters = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return None
    if len(parameters) < 2:
        return None
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # an annotation that does not resolve: treat as untyped
        hints = {}
    annotation = hints.get(parameters[1].name, parameters[1].annotation)
    return annotation if is_model_class(annotation) else None


def validate(model: type[Any], payload: Any, job_type: str) -> Any:
    """``payload`` as an instance of ``model``, or PayloadInvalid listing what is wrong."""
    if isinstance(payload, model):
        return payload
    try:
        return model.model_validate(payload)
    except Exception as exc:
        raise PayloadInvalid(
            f"the payload of job type {job_type!r} is not a valid {model.__name__}:\n"
            + describe_validation_error(exc)
        ) from exc


def describe_validation_error(exc: BaseException) -> str:
    """One line per error (``field: message``), from a Pydantic ValidationError."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return f"{type(exc).__name__}: {exc}"
    try:
        items = list(errors())
    except Exception:
        return f"{type(exc).__name__}: {exc}"
    lines = []
    for item in items[:ERRORS_SHOWN]:
        where = ".".join(str(part) for part in item.get("loc", ())) or "(payload)"
        lines.append(f"  {where}: {item.get('msg', 'invalid')} (got {item.get('input')!r:.80})")
    if len(items) > ERRORS_SHOWN:
        lines.append(f"  ... and {len(items) - ERRORS_SHOWN} more")
    return "\n".join(lines)
