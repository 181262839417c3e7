"""Bounded, printable text: the one place a string from a peer or a file is cut to size.

Everything a peer or a file controls (header values, AE titles, skip reasons built from them,
error comments, decoder messages) passes through :func:`clip` before it reaches a store column,
through :func:`printable` before it reaches a log line, an audit detail or a DIMSE Error
Comment. A value longer than its column would be refused by PostgreSQL (a DataError, not an
outage) and silently kept whole by SQLite; a control character in a log line can forge lines.
"""

from __future__ import annotations

from typing import Any

from governance.checks import at_least

#: Limit for columns declared without a length (TEXT) and for free text in general.
TEXT_LIMIT = 1000
#: Longest UID (PS3.5 9.1).
UID_LIMIT = 64


def printable(value: object, limit: int = TEXT_LIMIT) -> str:
    """``value`` as one line of at most ``limit`` printable characters.

    Bytes are decoded as ASCII with replacement; control characters (newlines, NUL, escape
    sequences) become ``?``; surrounding blanks are stripped; a longer text is cut.

    Raises
    ------
    ValueError
        ``limit`` is below 1.
    """
    at_least("limit", limit)
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        value = bytes(value[: limit * 4]).decode("ascii", "replace")
    # Cut before cleaning so a huge value costs no more than the limit.
    text = str(value)[: limit * 4]
    text = "".join(ch if ch.isprintable() else "?" for ch in text.replace("\x00", "")).strip()
    return text[:limit].rstrip()


def column_limit(column: Any) -> int:
    """The declared length of a string column (an ORM attribute or a Column); TEXT_LIMIT if none."""
    prop = getattr(column, "property", None)
    columns = getattr(prop, "columns", None)
    target = columns[0] if columns else column
    length = getattr(getattr(target, "type", None), "length", None)
    return int(length) if length else TEXT_LIMIT


def clip(value: object, column: Any) -> str | None:
    """``value`` made printable and cut to ``column``'s declared length; None when empty.

    Parameters
    ----------
    value
        A string (or bytes, or anything with a ``str``) from a peer or a file; None stays None.
    column
        An ORM attribute such as ``Instance.body_part``, a ``Column``, or an ``int`` limit.
    """
    if value is None:
        return None
    limit = column if isinstance(column, int) else column_limit(column)
    text = printable(value, limit)
    return text or None


def clip_uid(value: object) -> str:
    """A UID (or what a peer sent as one) for a log line or a comment: printable, 64 at most."""
    return printable(value, UID_LIMIT)
