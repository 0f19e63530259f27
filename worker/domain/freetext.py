"""Free text from task code made safe to store and log: always a `str`, valid, bounded.

Whatever a task returns or raises reaches the run's record through here: an object whose
``str()`` raises, returns a non-string or is huge, an exception whose ``__str__`` fails, a
chain of thousands of exceptions, lone surrogates (a file name from ``os.listdir``), NUL.
The result is text every database stores: lone surrogates and NUL become visible
``\\udcff`` / ``\\x00`` escapes, and anything longer than `MAX_TEXT_CHARS` is cut with a
visible marker saying how long it was. Nothing here ever raises for the value's sake.

This module knows no storage and no runtime: it is the one rule for what text a run's
record may hold. (A row the database still refuses is the recorder's business.)
"""

from __future__ import annotations

import traceback
from collections.abc import Callable

__all__ = [
    "MAX_TEXT_CHARS",
    "TRACEBACK_MAX_CHARS",
    "bounded",
    "exception_text",
    "text_of",
    "traceback_text",
]

#: Characters kept of a message or an error: MariaDB's TEXT holds 65,535 bytes, and a
#: character takes at most 4 in utf8mb4 (16,000 x 4 = 64,000, room for the marker).
MAX_TEXT_CHARS = 16_000
#: Characters kept of a traceback written to the log (a chain of 20,000 exceptions
#: formats to megabytes).
TRACEBACK_MAX_CHARS = 50_000


def _marker(total: int) -> str:
    return f" ...[truncated: {total} characters in all]"


def bounded(text: str, max_chars: int = MAX_TEXT_CHARS) -> str:
    """``text`` as valid text of at most ``max_chars`` characters, marked if it was cut."""
    valid = str.__str__(text)  # a str subclass's own methods are not trusted
    if "\x00" in valid:
        valid = valid.replace("\x00", "\\x00")
    try:
        valid.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: shown as escapes, not refused
        valid = valid.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(valid) <= max_chars:
        return valid
    marker = _marker(len(valid))
    return valid[: max(0, max_chars - len(marker))] + marker


def _unprintable(value: object) -> str:
    try:
        name = type(value).__qualname__
    except Exception:  # a hostile metaclass
        name = "object"
    return f"<unprintable {name} object>"


def _attempt(show: Callable[[object], object], value: object) -> str | None:
    """``show(value)`` as a plain str, or None if it raises or returns a non-string."""
    try:
        text = show(value)
    except Exception:
        return None
    return str.__str__(text) if isinstance(text, str) else None


def text_of(value: object, max_chars: int = MAX_TEXT_CHARS) -> str:
    """``str(value)``; if that fails, its ``repr``; if that fails too, a placeholder naming
    the type. Always valid, bounded text."""
    text = _attempt(str, value)
    if text is None:
        shown = _attempt(repr, value)
        text = _unprintable(value) if shown is None else f"<str() failed> {shown}"
    return bounded(text, max_chars)


def exception_text(exc: BaseException, max_chars: int = MAX_TEXT_CHARS) -> str:
    """``"TypeName: message"`` for a run's error, whatever the exception's ``__str__`` does."""
    return bounded(f"{type(exc).__name__}: {text_of(exc, max_chars)}", max_chars)


def traceback_text(exc: BaseException, max_chars: int = TRACEBACK_MAX_CHARS) -> str:
    """The formatted traceback (with its chain), cut at ``max_chars`` with a marker."""
    try:
        lines = traceback.TracebackException.from_exception(exc).format()
        # the formatter is lazy: take only what fits, never the megabytes of a long chain
        taken: list[str] = []
        size = 0
        for line in lines:
            if size + len(line) > max_chars:
                taken += [line[: max_chars - size], "\n... [traceback truncated]"]
                break
            taken.append(line)
            size += len(line)
        text = "".join(taken).rstrip()
    except Exception:  # the formatter itself failed: say so, with what can be said
        text = f"{exception_text(exc)}\n(the traceback could not be formatted)"
    return bounded(text, max_chars + 40)
