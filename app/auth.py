"""API keys: `Authorization: Bearer <key>` or `X-API-Key: <key>`, compared in constant time.

The headers are read by FastAPI's security classes (so the OpenAPI schema declares both
schemes); they never refuse on their own (`auto_error=False`): the refusal is ours, a
problem+json 401 with `WWW-Authenticate: Bearer`.
"""

from __future__ import annotations

import hmac

from fastapi.security import APIKeyHeader, HTTPBearer

from app.config import ANONYMOUS_CALLER, ApiKey
from app.errors import Unauthorized

ANONYMOUS = ANONYMOUS_CALLER  # the caller name when API_KEYS is empty (auth off)
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="mms-gateway"'}

bearer_scheme = HTTPBearer(
    scheme_name="bearer", description="An API key as a Bearer token", auto_error=False
)
api_key_scheme = APIKeyHeader(
    name="X-API-Key", scheme_name="apiKey", description="An API key", auto_error=False
)


class Authenticator:
    def __init__(self, keys: tuple[ApiKey, ...]) -> None:
        self._keys = [(key.name, key.secret.encode()) for key in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    @property
    def names(self) -> frozenset[str]:
        """The configured keys' names (the outbox cancels a removed key's messages)."""
        return frozenset(name for name, _ in self._keys)

    def identify(self, presented: str) -> str | None:
        """The key's name, or None. Compares against every key, without an early exit."""
        candidate = presented.encode()
        found = None
        for name, secret in self._keys:
            if hmac.compare_digest(candidate, secret):
                found = name
        return found

    def caller(self, presented: str | None) -> str:
        """The presented key's name; raises Unauthorized (401 + WWW-Authenticate)."""
        if not self._keys:
            return ANONYMOUS
        name = self.identify(presented) if presented else None
        if name is None:
            detail = "Send a valid API key as `Authorization: Bearer <key>` or `X-API-Key`."
            raise Unauthorized(detail, headers=dict(CHALLENGE))
        return name
