"""Plivo webhook signatures: which scheme to check, the check itself, and every nonce.

The expected V3 value comes from the plivo SDK's own helpers (`construct_post_url`,
`get_signature_v3`), so our reading of the scheme cannot drift from Plivo's. The SDK's
validators themselves compare with `==`/`in` (not constant time), so we compare here. V2 is
a plain HMAC-SHA256 of the URL (without query) and the nonce — Plivo's messaging pages
document V2, its voice pages V3.

Which schemes count is the PLIVO_SIGNATURE setting: `v3`, `v2`, or `any` (V3 when its
header is present, else V2). Whatever scheme was checked, every nonce the request carries
is returned for recording: a request signed both ways and replayed with only its V2
headers (V2 does not sign the body, so the body can be forged) is then a duplicate.

Used by every route that takes Plivo's signed requests, through `read_signed_form`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from starlette.requests import Request

from app import errors
from app.callbacks.form import FormError, parse_form

V3 = "x-plivo-signature-v3"
V3_NONCE = "x-plivo-signature-v3-nonce"
V2 = "x-plivo-signature-v2"
V2_NONCE = "x-plivo-signature-v2-nonce"

Accepted = Literal["v3", "v2", "any"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """`scheme`: "v3"/"v2" when signed by Plivo, else "missing" (no header of an accepted
    scheme) or "invalid". `nonces`: every nonce in the request, set only when signed."""

    scheme: str
    nonces: tuple[str, ...] = ()

    @property
    def signed(self) -> bool:
        return self.scheme in ("v3", "v2")


def expected_v3(url: str, params: Mapping[str, Any], nonce: str, auth_token: str) -> bytes:
    # Imported here: the SDK pulls in requests and lxml (~130 ms), needed only for callbacks.
    from plivo.utils.signature_v3 import construct_post_url, get_signature_v3

    base = construct_post_url(url, dict(params)).decode("utf-8")
    signature: bytes = get_signature_v3(auth_token.encode(), base, nonce.encode())
    return signature


def expected_v2(url: str, nonce: str, auth_token: str) -> bytes:
    parts = urlsplit(url)
    base = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    digest = hmac.new(auth_token.encode(), (base + nonce).encode(), hashlib.sha256).digest()
    return base64.b64encode(digest)


def _any_matches(expected: bytes, header: str) -> bool:
    """Plivo may send several comma-separated signatures; compare with each, no early exit."""
    found = False
    for candidate in header.split(","):
        if hmac.compare_digest(expected, candidate.strip().encode()):
            found = True
    return found


def scheme_to_check(headers: Mapping[str, str], accepted: Accepted) -> str | None:
    """The scheme this request is checked under, from its headers alone (before any body
    is read); None when it carries no signature header of an accepted scheme."""
    has_v3, has_v2 = headers.get(V3) is not None, headers.get(V2) is not None
    if accepted == "v3":
        return "v3" if has_v3 else None
    if accepted == "v2":
        return "v2" if has_v2 else None
    return "v3" if has_v3 else "v2" if has_v2 else None


def nonces_of(headers: Mapping[str, str]) -> tuple[str, ...]:
    """Every nonce in the request (V3 and V2), whichever scheme is checked."""
    found = (headers.get(V3_NONCE), headers.get(V2_NONCE))
    return tuple(dict.fromkeys(n for n in found if n))


def verify(
    *,
    url: str,
    headers: Mapping[str, str],
    params: Mapping[str, Any] | None,
    auth_token: str,
    accepted: Accepted = "any",
) -> Verdict:
    """Check the request's signature. `params` (the form fields) are needed for V3 only:
    None checks V2 without them, and answers "invalid" for V3."""
    scheme = scheme_to_check(headers, accepted)
    if scheme is None:
        return Verdict("missing")
    if scheme == "v3":
        nonce = headers.get(V3_NONCE) or ""
        valid = (
            bool(nonce)
            and params is not None
            and _any_matches(expected_v3(url, params, nonce, auth_token), headers[V3])
        )
    else:
        nonce = headers.get(V2_NONCE) or ""
        valid = bool(nonce) and _any_matches(expected_v2(url, nonce, auth_token), headers[V2])
    return Verdict(scheme, nonces_of(headers)) if valid else Verdict("invalid")


async def read_signed_form(
    request: Request, *, url: str, auth_token: str, accepted: Accepted
) -> tuple[dict[str, str], Verdict]:
    """Read and check a signed Plivo form request, cheapest refusal first.

    No signature header of an accepted scheme: refused before the body is read. A V2
    signature (URL and nonce only) is checked before the body is parsed. The body is then
    parsed in one bounded pass (a malformed form is a 422 `validation_error`), and a V3
    signature checked against it. The params come back empty when the body was not read.
    """
    scheme = scheme_to_check(request.headers, accepted)
    if scheme is None:
        return {}, Verdict("missing")
    if scheme == "v2":
        verdict = verify(
            url=url, headers=request.headers, params=None, auth_token=auth_token, accepted="v2"
        )
        if not verdict.signed:
            return {}, verdict
    try:
        params = parse_form(await request.body())
    except FormError as exc:
        raise errors.invalid(("body", exc.field), exc.message) from None
    if scheme == "v3":
        verdict = verify(
            url=url, headers=request.headers, params=params, auth_token=auth_token, accepted="v3"
        )
    return params, verdict
