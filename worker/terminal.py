"""Text shown on an operator's terminal: control characters made visible, never obeyed.

A task's message, an error, a task name, a reason in the database reach `status`,
`history`, `tasks` and console log lines. Text holding ``ESC [`` sequences could clear
the screen, rewrite what was printed, set the window title or worse; a lone surrogate
would make printing itself fail. `escape_controls` turns every control character (C0,
DEL, C1), every bidirectional override, line and paragraph separators and lone
surrogates into a visible escape (``\\x1b``, ``\\u202e``); a backslash stays as it is.

Only what people read goes through here: JSON output escapes by itself, and journald and
structured logs keep the raw text. This module knows nothing else.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["escape_console_event", "escape_controls"]

_CONTROLS = re.compile(
    "[\x00-\x1f\x7f-\x9f"  # C0 (tab and newline included: a table cell is one line), DEL, C1
    "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"  # bidirectional marks and overrides
    "\u2028\u2029"  # line and paragraph separators
    "\ud800-\udfff]"  # lone surrogates (a file name from os.listdir)
)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every control character shown as an escape; ``keep_newlines`` leaves
    ``\\n`` (a multi-line log message, a traceback) as a line break."""
    if keep_newlines:
        return "\n".join(_CONTROLS.sub(_escape, line) for line in text.split("\n"))
    return _CONTROLS.sub(_escape, text)


def escape_console_event(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """A structlog processor for the console: every string value escaped, line breaks
    kept (tracebacks stay readable)."""
    return {
        key: escape_controls(value, keep_newlines=True) if isinstance(value, str) else value
        for key, value in event_dict.items()
    }
