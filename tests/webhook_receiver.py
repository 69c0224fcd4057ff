"""A webhook receiver on loopback, in a thread of its own: what a caller's endpoint is.

Every request is kept (headers, body) and checked with the `standardwebhooks` library —
the verifier any receiver would use, not the service's own code. Tests choose the answer:
a status code, a hang (no answer at all), or a closed port (`stop()`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # 24 bytes, base64


@dataclass
class Receipt:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: Any  # the payload the library returned, or None
    error: str | None
    at: float

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def payload(self) -> Any:
        return orjson.loads(self.body)


class Receiver:
    def __init__(self, secret: str = SECRET) -> None:
        self.verifier = Webhook(secret)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._release: asyncio.Event | None = None
        self.port = 0
        self.receipts: list[Receipt] = []
        self.status = 200
        self.hanging = False
        self.answer = b"ok"

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            verified, error = self.verifier.verify(body, headers), None
        except WebhookVerificationError as exc:
            verified, error = None, str(exc)
        with self._lock:
            self.receipts.append(
                Receipt(request.path, headers, body, verified, error, time.monotonic())
            )
            hanging, status, answer = self.hanging, self.status, self.answer
        if hanging:
            assert self._release is not None
            await self._release.wait()
        return web.Response(status=status, body=answer)

    def start(self, port: int = 0) -> Receiver:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            self._release = asyncio.Event()
            app = web.Application()
            app.router.add_route("POST", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, shutdown_timeout=0.5)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", port)
            loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True, name="webhook-receiver")
        self._thread.start()
        ready.wait(10)
        return self

    def unhang(self) -> None:
        with self._lock:
            self.hanging = False
        if self._loop is not None and self._release is not None:
            self._loop.call_soon_threadsafe(self._release.set)

    def stop(self) -> None:
        if self._loop is None:
            return
        self.unhang()
        assert self._runner is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(10)
        self._loop = None

    # Reading -----------------------------------------------------------------------------
    def got(self, path: str | None = None) -> list[Receipt]:
        with self._lock:
            return [r for r in self.receipts if path is None or r.path == path]

    def of_type(self, event_type: str, path: str | None = None) -> list[Receipt]:
        return [r for r in self.got(path) if r.payload.get("type") == event_type]
