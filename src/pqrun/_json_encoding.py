"""JSON text for jsonb: payloads, handlers' results and schedules' payloads.

A store encodes with one ``JSONEncoding``, made from its ``json_encoder`` option: a
``json.JSONEncoder`` subclass (Django's ``DjangoJSONEncoder``) or a ``default=``
function. The encoder object is built once, so a payload of plain JSON costs what
``json.dumps`` costs. Only when encoding fails is the value walked, to name the field
that JSON cannot carry.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, TypeAlias

from .models import RawJSON, is_pydantic_model

#: What ``PgJobStore(json_encoder=...)`` takes: a JSONEncoder subclass, a ``default=``
#: function (called with each value JSON cannot carry, returns one it can), or None.
JSONEncoderOption: TypeAlias = type[json.JSONEncoder] | Callable[[Any], Any] | None

# jsonb refuses NaN and infinities; the separators keep the stored text short.
_SETTINGS: dict[str, Any] = {"separators": (",", ":"), "allow_nan": False}

# Python writes at most 4300 digits of an int (sys.set_int_max_str_digits): any int of
# fewer bits than this has fewer digits, and is not worth trying alone.
_SAFE_INT_BITS = 14_000

DOCS = 'docs/configuration.md, "Payloads and JSON"'


class Unencodable(TypeError):
    """A value the encoding refused; ``convertible``: an encoder could convert it (it is
    an object JSON has no type for, not a NaN, a key or a cycle)."""

    def __init__(self, message: str, convertible: bool) -> None:
        super().__init__(message)
        self.convertible = convertible


class JSONEncoding:
    """Encodes values for a jsonb column with one encoder, or names what it cannot encode."""

    __slots__ = ("_encode", "option")

    def __init__(self, option: JSONEncoderOption = None) -> None:
        self.option = option
        if option is None:
            encoder = json.JSONEncoder(**_SETTINGS)
        elif isinstance(option, type) and issubclass(option, json.JSONEncoder):
            encoder = option(**_SETTINGS)
        elif callable(option) and not isinstance(option, json.JSONEncoder):
            encoder = json.JSONEncoder(default=option, **_SETTINGS)
        else:
            raise TypeError(
                "json_encoder must be a json.JSONEncoder subclass (the class, such as "
                "DjangoJSONEncoder, not an instance) or a function that turns a value JSON "
                f"cannot carry into one it can (json.dumps' default=), got {option!r}"
            )
        self._encode: Callable[[Any], str] = encoder.encode

    def __call__(self, value: Any, what: str, root: str = "payload") -> str:
        """``value`` as JSON text, or TypeError naming ``what``, the field and the fix.

        ``root`` names the value in the field's path: ``payload["order"]["when"]``.
        RecursionError (nesting about 1000 deep) passes through for the caller to word.
        """
        if value is None:
            return "null"  # most handlers return nothing: no encoder call per job for it
        if isinstance(value, RawJSON):
            return str(value)
        if is_pydantic_model(value):
            # By alias: the handler validates what it reads, and a model with aliases
            # reads its fields under those names.
            return str(value.model_dump_json(by_alias=True))
        try:
            return self._encode(value)
        except (TypeError, ValueError) as exc:
            raise self._refusal(value, what, root, exc) from exc

    def _refusal(self, value: Any, what: str, root: str, exc: Exception) -> Unencodable:
        found = _first_unencodable(value, self._encode, root, set())
        if found is None:  # an encoder of the caller's that fails for a reason of its own
            return Unencodable(
                f"{what} is not JSON-serializable ({type(exc).__name__}: {exc})", False
            )
        where, an_object = found
        if not an_object:  # NaN, a key, a cycle: no encoder changes those
            return Unencodable(f"{what} is not JSON-serializable: {where} ({DOCS})", False)
        if self.option is None:
            fix = (
                "convert it first (to a string or a number), or pass an encoder for it as "
                "json_encoder= to PgJobStore (or pqrun.sync.enqueue): a json.JSONEncoder "
                "subclass such as DjangoJSONEncoder, or a default= function"
            )
        else:
            name = getattr(self.option, "__qualname__", repr(self.option))
            fix = (
                f"the store's json_encoder ({name}) does not encode it either: convert it "
                "first, or extend the encoder"
            )
        return Unencodable(f"{what} is not JSON-serializable: {where}; {fix} ({DOCS})", True)


def _type_name(value: Any) -> str:
    kind = type(value)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def _step(path: str, key: Any) -> str:
    return f"{path}[{json.dumps(key) if isinstance(key, str) else repr(key)}]"


def _first_unencodable(
    value: Any, encode: Callable[[Any], str], path: str, open_containers: set[int]
) -> tuple[str, bool] | None:
    """Where in ``value`` the first thing ``encode`` refuses is and what it is, and whether
    it is an object an encoder could convert; None if nothing is refused (then the
    encoder failed for a reason of its own)."""
    if value is None or isinstance(value, str | bool):
        return None
    if isinstance(value, int):
        if value.bit_length() > _SAFE_INT_BITS:
            try:
                encode(value)
            except ValueError:
                return f"{path} is an int of more than 4300 digits: send it as a string", False
        return None
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        return f"{path} is {value}, and jsonb stores no NaN or infinity: send null", False
    if isinstance(value, dict | list | tuple):
        if id(value) in open_containers:
            return f"{path} contains itself (a circular reference)", False
        open_containers.add(id(value))
        if isinstance(value, dict):
            items: Any = value.items()
            for key, _ in items:
                if key is not None and not isinstance(key, str | int | float | bool):
                    return (
                        f"{path} has a key of type {_type_name(key)}; JSON object keys are "
                        "strings (ints, floats, booleans and None become strings)",
                        False,
                    )
        else:
            items = enumerate(value)
        for key, item in items:
            found = _first_unencodable(item, encode, _step(path, key), open_containers)
            if found is not None:
                return found
        open_containers.discard(id(value))
        return None
    try:
        encode(value)
    except (TypeError, ValueError):
        return f"{path} is a {_type_name(value)}, which JSON cannot carry", True
    return None


#: The encoding of a store made without ``json_encoder``: plain JSON, or a TypeError.
DEFAULT_ENCODING = JSONEncoding()


def encode_json(value: Any, what: str, root: str = "payload") -> str:
    """``value`` as JSON text with the default encoding (no ``json_encoder``)."""
    return DEFAULT_ENCODING(value, what, root)
