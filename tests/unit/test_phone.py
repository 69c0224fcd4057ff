"""Recipient numbers: one canonical spelling, validity and region from one parse."""

from __future__ import annotations

import phonenumbers
import pytest

from app.phone import E164_PROBLEM, canonical_problem, canonical_region

CASES = [
    ("+14155550100", None, "US"),
    ("+16135550123", None, "CA"),
    ("+18095551234", None, "DO"),  # NANP, valid, but not where Plivo sends MMS
    ("+442071838750", None, "GB"),
    ("+80012345678", None, "001"),  # non-geographic (freephone): no country at all
    ("+112015550177", "must be in canonical E.164 form (+12015550177)", None),
    ("+15555555555", "is not a valid phone number", None),
    ("+999", E164_PROBLEM, None),
    ("14155550100", E164_PROBLEM, None),
    ("+1415555O100", E164_PROBLEM, None),
]


@pytest.mark.parametrize(("number", "problem", "region"), CASES)
def test_canonical_region(number, problem, region):
    assert canonical_region(number) == (problem, region)
    assert canonical_problem(number) == problem


@pytest.mark.parametrize("number", [n for n, problem, _ in CASES if problem is None])
def test_the_region_is_libphonenumbers_for_a_valid_number(number):
    parsed = phonenumbers.parse(number, None)
    assert phonenumbers.is_valid_number(parsed)
    assert canonical_region(number)[1] == phonenumbers.region_code_for_number(parsed)
