"""HTTP to the tests' own servers (the service, the fakes, nginx), all plain HTTP on loopback.

httpx builds an SSL context for every client it creates, `httpx.get` and `httpx.post`
included, and loading the CA bundle into it costs about 30 ms of CPU: the suite's polls of
`/health` and of message statuses made over a thousand of them per run, a fifth of its
CPU. These share one context, built once per test process.
"""

from __future__ import annotations

from typing import Any

import httpx

TLS = httpx.create_ssl_context()


def http_get(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(url, verify=TLS, **kwargs)


def http_post(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(url, verify=TLS, **kwargs)
