"""What can be enqueued: the checks that keep a job the database accepts also readable.

PostgreSQL stores some values that the rest of the way cannot carry: a worker's
``json.loads`` gives up on JSON nested about 1000 deep and on integers of more than 4300
digits, asyncpg cannot decode a timestamp beyond year 9999 or an infinite one, and jsonb
or text refuse NUL characters and lone UTF-16 surrogates with driver errors that do not
say which argument held them. Each check here refuses such a value before it is sent,
with an error that names the argument. docs/configuration.md ("Limits on what can be
enqueued") lists them.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from typing import Any, NoReturn

from ._json_encoding import DEFAULT_ENCODING, JSONEncoding
from .errors import PayloadInvalid
from .models import RawJSON

#: How deep a payload's arrays and objects may nest. A worker reads the payload with
#: ``json.loads``, which raises RecursionError near Python's recursion limit (1000),
#: less the frames already on the stack: 500 leaves ample room.
MAX_PAYLOAD_DEPTH = 500

#: How many digits a number in a payload may have once stored. jsonb writes ``1e5000``
#: back as an integer of 5001 digits, which ``json.loads`` refuses (Python reads at most
#: 4300 digits into an int, see sys.set_int_max_str_digits).
MAX_NUMBER_DIGITS = 4000

#: The range of ``run_after`` (UTC), both ends excluded: the constraint
#: jobs_run_after_readable in ddl.sql. asyncpg reads infinite timestamps as naive
#: datetime.min/max and cannot read years beyond 9999; a day of margin at each end keeps
#: every stored time a datetime in any time zone.
RUN_AFTER_MIN = datetime(1, 1, 2, tzinfo=UTC)
RUN_AFTER_MAX = datetime(9999, 12, 31, tzinfo=UTC)

# JSON strings, so that brackets inside them are not counted as nesting.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
# Each escape in JSON text, left to right: an escaped backslash (\\) is consumed whole,
# so \\u0000 (a backslash, then "u0000") is not taken for the escape of NUL.
_ESCAPE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|.)", re.DOTALL)
_NUMBER = re.compile(r"-?(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d+))?")


def check_text(name: str, value: str) -> str:
    """Refuse a text argument PostgreSQL cannot store: a NUL character or a lone surrogate."""
    if "\x00" in value:
        raise ValueError(
            f"{name} must not contain NUL characters (\\x00), PostgreSQL text cannot hold "
            f"them; got {value!r}"
        )
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"{name} must be valid Unicode, it has a lone surrogate "
                f"{value[exc.start]!r} at index {exc.start} (decode bytes with "
                f"errors='strict' or 'replace', not 'surrogateescape'); got {value!r}"
            ) from None
    return value


def encode_payload(payload: Any, what: str, encoding: JSONEncoding = DEFAULT_ENCODING) -> str:
    """``payload`` (None: ``{}``) as JSON text that jsonb stores and a worker reads back.

    Raises TypeError for a value ``encoding`` cannot encode (naming the field),
    PayloadInvalid (a ValueError) for one a worker could not read back; both name ``what``.
    """
    value = {} if payload is None else payload
    try:
        text = encoding(value, what)
    except RecursionError:  # from json.dumps, on a payload nested about 1000 deep
        raise PayloadInvalid(
            f"{what} nests arrays/objects deeper than {MAX_PAYLOAD_DEPTH}, as deep as a "
            "worker (json.loads) can read back: flatten it"
        ) from None
    return check_payload_text(text, what, raw=isinstance(value, RawJSON))


def check_payload_text(text: str, what: str, *, raw: bool) -> str:
    """Refuse JSON text a worker could not read back, or jsonb would refuse.

    ``raw`` is True for a ``RawJSON`` payload: text pqrun did not encode itself, which
    is parsed once here to check that it is JSON and that each of its numbers stays
    readable once jsonb has normalized it. Text from ``json.dumps`` is only scanned.
    """
    if "\x00" in text:  # only in RawJSON: json.dumps escapes it
        raise PayloadInvalid(
            f"{what} has a NUL character (\\x00); JSON text must escape it, and jsonb "
            "cannot store it even escaped: remove it or encode the data (base64)"
        )
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise PayloadInvalid(
                f"{what} has a lone surrogate {text[exc.start]!r} (at character "
                f"{exc.start}), which is not valid Unicode: decode the bytes it came from "
                "with errors='strict' or 'replace', not 'surrogateescape'"
            ) from None
    # json.dumps writes a NUL in a string as \u0000 and a lone surrogate as \udXXX; jsonb
    # refuses both. Most payloads have neither substring, so the exact scan is rare.
    if "\\u0000" in text or "\\ud" in text or "\\uD" in text:
        _check_escapes(text, what)
    # Nesting deeper than MAX_PAYLOAD_DEPTH needs more brackets than that: count them
    # (in C) first, and follow the nesting only in a text that has that many.
    if text.count("[") + text.count("{") > MAX_PAYLOAD_DEPTH:
        brackets = re.sub(r"[^\[\]{}]+", "", _JSON_STRING.sub("", text))
        depth = max(accumulate(1 if b in "[{" else -1 for b in brackets), default=0)
        if depth > MAX_PAYLOAD_DEPTH:
            raise PayloadInvalid(
                f"{what} nests arrays/objects {depth} deep; at most {MAX_PAYLOAD_DEPTH} "
                "can be read back by a worker (json.loads): flatten it"
            )
    if raw:
        try:
            json.loads(text, parse_int=_readable_int, parse_float=_readable_float)
        except _NumberTooLong as exc:
            raise PayloadInvalid(
                f"{what} has the number {exc.args[0]}, which jsonb would store with "
                f"{exc.args[1]} digits; a worker (json.loads) reads at most "
                f"{MAX_NUMBER_DIGITS}: send it as a string"
            ) from None
        except (ValueError, RecursionError) as exc:
            raise PayloadInvalid(f"{what} is not valid JSON text (RawJSON): {exc}") from None
    return text


def _check_escapes(text: str, what: str) -> None:
    high: str | None = None  # a high surrogate escape that wants a low one right after
    high_end = -1
    for match in _ESCAPE.finditer(text):
        hexa = match.group(1)
        code = -1 if hexa is None else int(hexa, 16)
        if high is not None:
            if 0xDC00 <= code <= 0xDFFF and match.start() == high_end:
                high = None  # a pair: one character beyond the BMP
                continue
            _lone_surrogate(high, what)
        if code == 0:
            raise PayloadInvalid(
                f"{what} has a NUL character (\\u0000) in a string; jsonb cannot store "
                "it: remove it or encode the data (base64)"
            )
        if 0xD800 <= code <= 0xDBFF:
            high, high_end = hexa, match.end()
        elif 0xDC00 <= code <= 0xDFFF:
            _lone_surrogate(hexa, what)
    if high is not None:
        _lone_surrogate(high, what)


def _lone_surrogate(hexa: str | None, what: str) -> NoReturn:
    raise PayloadInvalid(
        f"{what} has a lone surrogate (\\u{hexa}) in a string, which is not valid "
        "Unicode and which jsonb refuses: decode the bytes it came from with "
        "errors='strict' or 'replace', not 'surrogateescape'"
    )


class _NumberTooLong(ValueError):
    pass


def _stored_digits(token: str) -> int:
    """How many digits jsonb (numeric) writes for the JSON number ``token``."""
    match = _NUMBER.fullmatch(token)
    if match is None:  # pragma: no cover - json.loads passes only numbers
        return 0
    whole, fraction, exponent = match.group(1), match.group(2) or "", match.group(3)
    if exponent is None:
        return len(whole) + len(fraction)
    if len(exponent.lstrip("+-").lstrip("0")) > 6:
        return 10**7  # an exponent of millions: no one's number, and numeric's range ends
    shift = int(exponent)
    return max(1, len(whole) + shift) + max(0, len(fraction) - shift)


def _readable_int(token: str) -> int:
    if len(token) > MAX_NUMBER_DIGITS:
        raise _NumberTooLong(f"{token[:20]}... ({len(token)} digits)", len(token.lstrip("-")))
    return 0  # the value itself is not needed


def _readable_float(token: str) -> float:
    digits = _stored_digits(token)
    if digits > MAX_NUMBER_DIGITS:
        shown = token if len(token) <= 40 else f"{token[:20]}...{token[-10:]}"
        raise _NumberTooLong(shown, digits)
    return 0.0


def check_timeout_seconds(
    value: int | timedelta | None, name: str = "timeout_seconds"
) -> int | None:
    """``timeout_seconds`` as whole seconds (None: no deadline).

    A timedelta is rounded up, so a deadline is never shorter than asked; zero or
    negative ones are refused like ``0`` is.
    """
    if value is None:
        return None
    if isinstance(value, timedelta):
        if value <= timedelta(0):
            raise ValueError(
                f"{name} must be a positive duration (at least 1 s once rounded up), got "
                f"{value.total_seconds():g} s ({value!r}); for no deadline pass None"
            )
        whole, part = divmod(value, timedelta(seconds=1))
        value = whole + (1 if part else 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{name} must be an int (seconds) or a timedelta, got {type(value).__name__} {value!r}"
        )
    if not 1 <= value <= 2**31 - 1:
        raise ValueError(f"{name} must be between 1 and {2**31 - 1} seconds, got {value}")
    return value


def check_run_at(moment: datetime) -> datetime:
    """An aware ``run_after`` (a naive one is local time) within what a reader can read."""
    try:
        aware = moment if moment.tzinfo is not None else moment.astimezone()
        inside = RUN_AFTER_MIN < aware < RUN_AFTER_MAX
    except (OverflowError, ValueError):
        inside = False
    if not inside:
        raise ValueError(
            f"run_after must be after {RUN_AFTER_MIN:%Y-%m-%d} and before "
            f"{RUN_AFTER_MAX:%Y-%m-%d} (UTC), got {moment!r}; for 'never', do not enqueue "
            "the job (or cancel it)"
        )
    return aware


def check_run_delay(delay: timedelta) -> timedelta:
    """A ``run_after`` delay that lands within the range of check_run_at (by this clock)."""
    try:
        check_run_at(datetime.now(UTC) + delay)
    except (OverflowError, ValueError):
        raise ValueError(
            f"run_after={delay!r} lands outside {RUN_AFTER_MIN:%Y-%m-%d} .. "
            f"{RUN_AFTER_MAX:%Y-%m-%d} (UTC); give a shorter delay"
        ) from None
    return delay


#: The largest value of an ``integer`` column (priority, max_attempts, duration_ms).
INT32_MAX = 2**31 - 1


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` if it is an int (not a bool) in [minimum, INT32_MAX], else raise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if not minimum <= value <= INT32_MAX:
        raise ValueError(f"{name} must be between {minimum} and {INT32_MAX}, got {value}")
    return value
