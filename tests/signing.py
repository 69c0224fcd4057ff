"""Sign callbacks the way Plivo does, with the plivo SDK's own helpers (V3) and the
documented V2 scheme, so tests post what Plivo would post."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import Any
from urllib.parse import urlencode

from plivo.utils.signature_v3 import construct_post_url, get_signature_v3

from tests.fakeplivo import AUTH_TOKEN


def v3_headers(
    url: str, params: dict[str, Any], token: str = AUTH_TOKEN, nonce: str | None = None
) -> dict[str, str]:
    nonce = nonce or os.urandom(8).hex()
    base = construct_post_url(url, dict(params)).decode()
    signature = get_signature_v3(token.encode(), base, nonce.encode()).decode()
    return {"X-Plivo-Signature-V3": signature, "X-Plivo-Signature-V3-Nonce": nonce}


def v2_headers(url: str, token: str = AUTH_TOKEN, nonce: str | None = None) -> dict[str, str]:
    nonce = nonce or os.urandom(8).hex()
    digest = hmac.new(token.encode(), (url.split("?")[0] + nonce).encode(), hashlib.sha256).digest()
    return {
        "X-Plivo-Signature-V2": base64.b64encode(digest).decode(),
        "X-Plivo-Signature-V2-Nonce": nonce,
    }


def form(params: dict[str, Any]) -> bytes:
    return urlencode(params, doseq=True).encode()


FORM = {"Content-Type": "application/x-www-form-urlencoded"}
