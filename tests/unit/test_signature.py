"""Plivo's signature schemes and the form parser, as pure functions: signed here with the
plivo SDK's own V3 helpers and the documented V2 scheme (tests/signing.py)."""

from __future__ import annotations

import pytest
from starlette.datastructures import Headers

from app.callbacks.form import MAX_FIELDS, FormError, parse_form
from app.callbacks.signature import verify
from tests.fakeplivo import AUTH_TOKEN
from tests.signing import v2_headers, v3_headers

URL = "https://mms.example.com/api/mms/status"
PARAMS = {"MessageUUID": "u-1", "Status": "delivered", "ErrorCode": ""}


def check(headers, params=PARAMS, accepted="any", url=URL, token=AUTH_TOKEN):
    """`headers` as a request carries them (names case-insensitive)."""
    return verify(
        url=url, headers=Headers(headers), params=params, auth_token=token, accepted=accepted
    )


def test_v3_signs_url_params_and_nonce():
    headers = v3_headers(URL, PARAMS, nonce="n3")
    assert check(headers).scheme == "v3" and check(headers).nonces == ("n3",)
    assert check(headers, params={**PARAMS, "Status": "failed"}).scheme == "invalid"
    assert check(headers, url=URL + "x").scheme == "invalid"
    assert check(headers, token="another-token-0123").scheme == "invalid"


def test_v2_signs_url_and_nonce_only():
    headers = v2_headers(URL, nonce="n2")
    assert check(headers).scheme == "v2"
    assert check(headers, params={"anything": "else"}).scheme == "v2"  # V2 ignores the body
    assert check(headers, url=URL + "x").scheme == "invalid"


def test_one_of_several_comma_separated_signatures_may_match():
    headers = v3_headers(URL, PARAMS, nonce="n3")
    headers["X-Plivo-Signature-V3"] = "bogus, " + headers["X-Plivo-Signature-V3"]
    assert check(headers).signed


def test_v3_is_checked_when_present_and_both_nonces_are_reported():
    headers = {**v2_headers(URL, nonce="n2"), **v3_headers(URL, PARAMS, nonce="n3")}
    verdict = check(headers)
    assert verdict.scheme == "v3" and set(verdict.nonces) == {"n3", "n2"}
    headers["X-Plivo-Signature-V3"] = "forged"
    assert check(headers).scheme == "invalid"  # a valid V2 does not rescue a bad V3


@pytest.mark.parametrize(
    ("accepted", "has", "scheme"),
    [
        ("any", "v2", "v2"),
        ("any", "v3", "v3"),
        ("v3", "v2", "missing"),
        ("v3", "v3", "v3"),
        ("v2", "v2", "v2"),
        ("v2", "v3", "missing"),
    ],
)
def test_the_accepted_schemes_setting(accepted, has, scheme):
    headers = v3_headers(URL, PARAMS) if has == "v3" else v2_headers(URL)
    assert check(headers, accepted=accepted).scheme == scheme


def test_no_header_is_missing_and_an_empty_nonce_is_invalid():
    assert check({}).scheme == "missing"
    headers = v2_headers(URL, nonce="n2")
    headers["X-Plivo-Signature-V2-Nonce"] = ""
    assert check(headers).scheme == "invalid"


def test_form_keeps_blank_values_and_decodes_once():
    assert parse_form(b"a=1&b=&c=%2B1+2") == {"a": "1", "b": "", "c": "+1 2"}


def test_form_refuses_repeats_and_too_many_fields():
    with pytest.raises(FormError):
        parse_form(b"a=1&a=2")
    parse_form(b"&".join(b"f%d=1" % i for i in range(MAX_FIELDS)))
    with pytest.raises(FormError):
        parse_form(b"&".join(b"f%d=1" % i for i in range(MAX_FIELDS + 1)))
    with pytest.raises(FormError):
        parse_form(b"&" * (64 * 1024))  # empty pieces count
