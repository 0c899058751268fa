"""Text shared by the command line, ``pqrun top`` and the web dashboard: counts, spans
of time, and database text made safe to print on a terminal.

Job types, dedupe keys, worker ids, error texts and schedule names are written by
whoever can enqueue a job or run a worker. Printed raw, an escape sequence in one of them
would act on the terminal of whoever runs ``pqrun status``: clear the screen, move the
cursor to overwrite other lines, set the window title, or on some terminals worse.
Every command that prints such text passes it through ``printable()`` first; ``--json``
output needs nothing, as JSON escapes control characters itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# C0 and C1 control characters (ESC, BEL, CR, ...) and DEL; the Unicode line and
# paragraph separators, which some terminals and viewers break lines at; and the
# bidirectional overrides and isolates, which make text read differently from how it is
# stored (a line that seems to say one job type while holding another).
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match[0])
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(value: object, *, multiline: bool = False) -> str:
    """``str(value)`` with each control character shown as its escape (``\\x1b``).

    With ``multiline=True`` newlines are kept (an error's traceback, say); every other
    line break (``\\r``, ``\\x0b``, ...) is still shown escaped, so ``splitlines()`` of the
    result splits at the newlines only.
    """
    text = str(value)
    if multiline:
        return "\n".join(UNSAFE.sub(_escaped, line) for line in text.split("\n"))
    return UNSAFE.sub(_escaped, text)


def count_text(entry: Mapping[str, Any]) -> str:
    """An exact count as is, an estimate as ~N, an unknown one over the cap as >=N."""
    if entry["exact"]:
        return f"{entry['count']:,}"
    if entry["count"] is None:
        return f">={entry['at_least']:,}"
    return f"~{entry['count']:,}"


def duration_text(seconds: float, *, tenths: bool = False) -> str:
    """A span of time in its largest fitting unit: ``42s``, ``5m``, ``1.5h``, ``2.0d``.

    Seconds and minutes are whole unless ``tenths`` (``42.4s``, ``5.0m``): the command
    line's reports (``pqrun status``, ``workers``, ``schedules``) print tenths, the live
    views (``pqrun top``, the dashboard) round to whole units, as docs/cli.md shows.
    """
    if seconds < 60:
        return f"{seconds:.1f}s" if tenths else f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m" if tenths else f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def relative_text(seconds: float) -> str:
    """How far a moment is from now, given ``now - moment``: ``3s ago``, ``in 2m``."""
    text = duration_text(abs(seconds))
    return f"in {text}" if seconds < 0 else f"{text} ago"
