"""Opaque listing cursors: a position `(time, key)` in base64, one spelling per position.

Every value is bounded before it reaches a query: a huge integer overflowed SQLite's driver
(a 500) and a NUL made PostgreSQL refuse the query (a 503); both are the caller's mistake.
A cursor must be exactly what `encode` writes for its position, so no second spelling
(padding, stray characters) is accepted. Messages, opt-outs and webhook deliveries page
with it, each with its own key pattern.
"""

from __future__ import annotations

import base64
import re

_TIME = r"(0|[1-9][0-9]{0,18})"  # a non-negative BIGINT: both stores' time columns
_MAX_BIGINT = 2**63 - 1


def encode(at: int, key: str) -> str:
    return base64.urlsafe_b64encode(f"{at}:{key}".encode()).decode().rstrip("=")


def decode(cursor: str, key_pattern: str) -> tuple[int, str] | None:
    """The position in a cursor `encode` made with a key matching `key_pattern`, or None
    for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (ValueError, UnicodeError):  # binascii.Error is a ValueError
        return None
    match = re.fullmatch(rf"{_TIME}:({key_pattern})", raw)
    if match is None or int(match[1]) > _MAX_BIGINT:
        return None
    position = int(match[1]), match[2]
    return position if encode(*position) == cursor else None
