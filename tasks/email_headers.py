"""What may go into an email header: the one place that decides, for every field.

A header value is accepted only if neither its text nor anything it *decodes to* holds a
control character (C0 including CR, LF and TAB, DEL, C1) or a Unicode line or paragraph
separator. "Decodes to" covers RFC 2047 encoded words (`=?charset?q?...?=` and `?b?`),
which the stdlib's header parser turns back into text: on interpreters without the
CVE-2024-6923 fix the generator then writes a decoded CR/LF as a real line break, so
`=?utf-8?q?Invoice=0D=0ABcc:_x@evil.example?=` becomes a Bcc header and a forged body.
Checking the literal CR/LF is not enough; checking every encoded word, however it is
written (any charset, either case, inside a word, bad padding), is.

`check_header_value` refuses (ValueError naming the field); `neutralise` rewrites text
that end users wrote (ticket titles) so it can never be refused nor reinterpreted.
`check_serialised` is the last line: the built message is written out the ways the
transports write it and parsed back, and must have exactly the headers it was given,
whatever the interpreter's patch level. This module knows nothing of the outbox table.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

# Anything that looks like an encoded word, found anywhere (the parser finds them inside
# words too); lenient on purpose: better to look at a false one than to miss a real one.
_ENCODED_WORD = re.compile(r"=\?([^?\s]*)\?([A-Za-z])\?(.*?)\?=", re.DOTALL)
_BAD = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_FOLD = re.compile(r"\r?\n(?=[ \t])")  # a fold: a line break before white space
# The policies the transports write with: aiosmtplib SMTP, or SMTPUTF8 for non-ASCII
# envelope addresses (check_address refuses those today, but SMTPUTF8 writes some display
# names unquoted, so that they read back as a group: checked too, found by the fuzzer);
# the file transport the default policy.
SMTP_WRITERS = (policy.SMTP, policy.SMTPUTF8)
FILE_WRITERS = (policy.default,)


def bad_character(text: str) -> str | None:
    """The first control character (Unicode category Cc: C0, DEL, C1) or line or
    paragraph separator in `text`, or None."""
    found = _BAD.search(text)
    return found.group() if found else None


def _decode_word(charset: str, encoding: str, payload: str) -> str:
    """One encoded word's text as a lenient reader would see it (never raises)."""
    if encoding.lower() == "q":
        raw = re.sub(
            rb"=([0-9A-Fa-f]{2})",
            lambda m: bytes([int(m.group(1), 16)]),
            payload.replace("_", " ").encode("utf-8", "surrogateescape"),
        )
    elif encoding.lower() == "b":
        data = re.sub(r"[^A-Za-z0-9+/]", "", payload)
        try:
            raw = base64.b64decode(data + "=" * (-len(data) % 4))
        except (binascii.Error, ValueError):
            raw = b""
    else:
        return ""
    # Control bytes are control bytes in any ASCII-compatible charset (other bytes are
    # left out here); also decode in the named charset (C1, U+2028) when Python knows it.
    decoded = raw.decode("ascii", "replace")
    with contextlib.suppress(LookupError):
        decoded += raw.decode(charset.split("*", 1)[0] or "ascii", "replace")
    return decoded


def decoded_forms(text: str, depth: int = 4) -> list[str]:
    """`text` itself, what each encoded word in it decodes to, and what the stdlib's
    parser makes of it: every form a header value takes on its way out; and again for
    each form that still holds an encoded word (text encoded twice, up to `depth`).
    Without `=?` there is no encoded word: nothing decodes to anything else."""
    forms = [text]
    if "=?" not in text:
        return forms
    forms += [_decode_word(*m.groups()) for m in _ENCODED_WORD.finditer(text)]
    # the parser raises assorted errors on garbage: the other forms are still checked
    with contextlib.suppress(Exception):
        forms.append(str(policy.default.header_factory("Subject", text)))
    if depth > 0:
        for form in forms[1:]:
            if "=?" in form and form != text:
                forms += decoded_forms(form, depth - 1)
    return forms


def check_header_value(value: object, field: str) -> str:
    """`value` if it is text that is safe in a header, literally and decoded; else
    ValueError naming the field and the character."""
    if not isinstance(value, str):
        raise ValueError(f"{field}: must be text, not {type(value).__name__}")
    for form in decoded_forms(value):
        char = bad_character(form)
        if char is not None:
            where = "" if form is value else " (in an RFC 2047 encoded word)"
            kind = "a line break" if char in "\r\n\u2028\u2029\x85" else "a control character"
            raise ValueError(
                f"{field}: contains {kind} {char!r}{where}; header values must be text "
                "without line breaks or control characters"
            )
    return value


def neutralise(text: str) -> str:
    """Text an end user wrote, made safe for a header without refusing it: control
    characters and separators become spaces, `=?` (the start of an encoded word) becomes
    `= ?`, runs of white space one space."""
    cleaned = "".join(" " if bad_character(c) else c for c in text)
    while "=?" in cleaned:
        cleaned = cleaned.replace("=?", "= ?")
    return " ".join(cleaned.split())


def _squeezed(value: object) -> str:
    return "".join(str(value).split())


def _reads_back(name: str, raw: str, value: object) -> bool:
    """Whether the written header `raw` reads back as `value` (white space aside). The
    common case, a value written as is, is settled without parsing it again."""
    if _FOLD.sub("", raw) == str(value):
        return True
    try:
        return _squeezed(policy.default.header_fetch_parse(name, raw)) == _squeezed(value)
    except Exception:  # the stdlib's header parser raises assorted errors on garbage
        return False


def check_serialised(
    message: EmailMessage, writers: tuple[policy.EmailPolicy[EmailMessage], ...] = SMTP_WRITERS
) -> None:
    """Write `message` as the transports would (`writers`) and parse it back: ValueError
    unless the headers that come back are exactly the ones set (same names, same order)
    with the same values (white space aside: folding moves it; nothing else may change,
    e.g. text that becomes an encoded word only once folded)."""
    for writer in writers:
        try:
            data = message.as_bytes(policy=writer)
        except (ValueError, TypeError, UnicodeError, LookupError) as exc:
            raise ValueError(f"the message cannot be written: {exc}") from None
        intended = message.items()  # after writing: that sets a multipart's boundary
        parsed = BytesParser(policy=policy.default).parsebytes(data, headersonly=True)
        got = list(parsed.raw_items())
        names = [name.lower() for name, _ in got]
        if names != [name.lower() for name, _ in intended]:
            extra = sorted(set(names) - {name.lower() for name, _ in intended}) or names
            raise ValueError(f"refused: the written message has other headers than set: {extra}")
        for (name, raw), (_, value) in zip(got, intended, strict=True):
            if not _reads_back(name, raw, value):
                raise ValueError(f"{name}: refused: its value would not read back as written")
