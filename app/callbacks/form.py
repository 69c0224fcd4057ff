"""Plivo's form bodies (`application/x-www-form-urlencoded`), parsed in one linear pass.

The stdlib's parse_qsl has no bound on the number of fields, and collecting repeated
names into lists by copying made a 64 KiB body of `a&a&a&...` quadratic. Plivo sends a few
dozen distinct fields, so anything else is refused: more than MAX_FIELDS pieces between
`&` (empty pieces count, so the split itself stops early) or a name given twice.
"""

from __future__ import annotations

from urllib.parse import unquote_plus

MAX_FIELDS = 100


class FormError(ValueError):
    """A body that is not a plain Plivo form; `field` names the offending part."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def parse_form(raw: bytes) -> dict[str, str]:
    """Decode a form body into name -> value (blank values kept: Plivo signs them too).

    Linear in len(raw): the split is capped at MAX_FIELDS + 1 pieces, and every piece is
    decoded once. Invalid UTF-8 becomes U+FFFD, as parse_qsl does by default.
    """
    if not raw:
        return {}
    pieces = raw.split(b"&", MAX_FIELDS)
    if len(pieces) > MAX_FIELDS:
        raise FormError("body", f"at most {MAX_FIELDS} fields")
    params: dict[str, str] = {}
    for piece in pieces:
        if not piece:
            continue  # `a=1&&b=2`: an empty piece, as parse_qsl skips it
        name_raw, _, value_raw = piece.partition(b"=")
        name = unquote_plus(name_raw.decode("utf-8", "replace"))
        if name in params:
            raise FormError(name[:64], "a field may appear only once")
        params[name] = unquote_plus(value_raw.decode("utf-8", "replace"))
    return params
