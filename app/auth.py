"""API keys: `Authorization: Bearer <key>` or `X-API-Key: <key>`, compared in constant time."""

from __future__ import annotations

import hmac

from fastapi import Request

from app.config import ApiKey
from app.errors import Unauthorized

ANONYMOUS = "anonymous"  # the caller name when API_KEYS is empty (auth off)
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="mms-gateway"'}


class Authenticator:
    def __init__(self, keys: tuple[ApiKey, ...]) -> None:
        self._keys = [(key.name, key.secret.encode()) for key in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def identify(self, presented: str) -> str | None:
        """The key's name, or None. Compares against every key, without an early exit."""
        candidate = presented.encode()
        found = None
        for name, secret in self._keys:
            if hmac.compare_digest(candidate, secret):
                found = name
        return found

    def caller(self, request: Request) -> str:
        """The caller's name; raises Unauthorized (401 + WWW-Authenticate)."""
        if not self._keys:
            return ANONYMOUS
        headers = request.headers
        authorization = headers.get("authorization")
        if authorization is not None:
            scheme, _, token = authorization.partition(" ")
            presented = token.strip() if scheme.lower() == "bearer" else ""
        else:
            presented = headers.get("x-api-key", "")
        name = self.identify(presented) if presented else None
        if name is None:
            detail = "Send a valid API key as `Authorization: Bearer <key>` or `X-API-Key`."
            raise Unauthorized(detail, headers=dict(CHALLENGE))
        request.scope["state"]["caller"] = name
        return name
