"""Plivo webhook signatures: V3 when present, else V2; every comparison in constant time.

The expected V3 value comes from the plivo SDK's own helpers (`construct_post_url`,
`get_signature_v3`), so our reading of the scheme cannot drift from Plivo's. The SDK's
validators themselves compare with `==`/`in` (not constant time), so we compare here. V2 is
a plain HMAC-SHA256 of the URL (without query) and the nonce — Plivo's messaging pages
document V2, its voice pages V3.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any
from urllib.parse import urlsplit, urlunsplit

V3 = "x-plivo-signature-v3"
V3_NONCE = "x-plivo-signature-v3-nonce"
V2 = "x-plivo-signature-v2"
V2_NONCE = "x-plivo-signature-v2-nonce"


def expected_v3(url: str, params: dict[str, Any], nonce: str, auth_token: str) -> bytes:
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


def verify(
    *, url: str, params: dict[str, Any], headers: Any, auth_token: str
) -> tuple[str, str | None]:
    """("v3"|"v2", nonce) when the request is signed by Plivo; ("invalid"|"missing", None)."""
    if headers.get(V3) is not None:
        nonce = headers.get(V3_NONCE) or ""
        if nonce and _any_matches(expected_v3(url, params, nonce, auth_token), headers[V3]):
            return "v3", nonce
        return "invalid", None
    if headers.get(V2) is not None:
        nonce = headers.get(V2_NONCE) or ""
        if nonce and _any_matches(expected_v2(url, nonce, auth_token), headers[V2]):
            return "v2", nonce
        return "invalid", None
    return "missing", None
