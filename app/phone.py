"""Phone-number syntax shared by the configuration and the request models."""

from __future__ import annotations

import re

E164 = re.compile(r"\+[1-9][0-9]{1,14}")  # ASCII digits only: \d would admit other scripts
E164_PROBLEM = "must be an E.164 number such as +14155550100"


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
    return canonical_region(number)[0]


def canonical_region(number: str) -> tuple[str | None, str | None]:
    """`(None, region)` for a valid number in canonical E.164 form, with its region code
    (`US`, `CA`, ...); `(why not, None)` otherwise. One parse and one region lookup: the
    send route checks every recipient with it, and a bulk sender's recipients are mostly
    numbers it has not seen yet (no cache helps there)."""
    import phonenumbers

    if not E164.fullmatch(number):
        return E164_PROBLEM, None
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return E164_PROBLEM, None
    # libphonenumber forgives some spellings (`+112015550177`: the national prefix 1 is
    # dropped); accepting them would make one recipient several limit buckets and opt-out
    # entries, and send Plivo a form it may read differently.
    canonical = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    if canonical != number:
        return f"must be in canonical E.164 form ({canonical})", None
    # What `is_valid_number` does, keeping the region it looks up on the way.
    region = phonenumbers.region_code_for_number(parsed)
    if region is None or not phonenumbers.is_valid_number_for_region(parsed, region):
        return "is not a valid phone number", None
    return None, region
