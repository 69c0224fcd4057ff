"""Phone-number syntax shared by the configuration and the request models."""

from __future__ import annotations

import re

E164 = re.compile(r"\+[1-9][0-9]{1,14}")  # ASCII digits only: \d would admit other scripts


def from_plivo(value: str | None) -> str | None:
    """A number as Plivo writes it (`14155550100` or `+14155550100`) in E.164, or None."""
    if not value:
        return None
    value = value.strip()
    number = value if value.startswith("+") else f"+{value}"
    return number if E164.fullmatch(number) else None


def canonical_problem(number: str) -> str | None:
    """Why `number` is not a canonical E.164 number (libphonenumber's own spelling of a
    valid number), or None. One spelling per number: one opt-out entry per recipient."""
    import phonenumbers

    if not E164.fullmatch(number):
        return "must be an E.164 number such as +14155550100"
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return "must be an E.164 number such as +14155550100"
    # libphonenumber forgives some spellings (`+112015550177`: the national prefix 1 is
    # dropped); accepting them would make one recipient several limit buckets and opt-out
    # entries, and send Plivo a form it may read differently.
    canonical = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    if canonical != number:
        return f"must be in canonical E.164 form ({canonical})"
    if not phonenumbers.is_valid_number(parsed):
        return "is not a valid phone number"
    return None
