"""A programmable fake of Plivo's Message API on loopback, in a thread of its own.

Real sockets: a refused connection is a closed port, a drop is a connection aborted after
the request was read, a hang is a handler that never answers. Tests script the next calls
(`script(...)`), read what Plivo would have received (`calls`), and program the Message
Get / list answers (`mdrs`). Run standalone with `python -m tests.fakeplivo --port 8765`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

AUTH_ID = "MAFAKEAUTHID00000000"
AUTH_TOKEN = "fake-auth-token-0123456789"


@dataclass
class Action:
    """What the fake does with one message request."""

    kind: str = "ok"  # ok | status | raw | hang | drop | accept_then_drop
    status: int = 202
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    uuid: str | None = None  # the message_uuid to hand out (default: a new one)
    release: threading.Event | None = None  # answer only once the test sets it


def ok(
    delay: float = 0.0, uuid: str | None = None, release: threading.Event | None = None
) -> Action:
    return Action("ok", delay=delay, uuid=uuid, release=release)


def accept_then_drop() -> Action:
    """Plivo queues the message, then the connection breaks before the answer arrives."""
    return Action("accept_then_drop")


def status(code: int, error: str = "injected", retry_after: str | None = None) -> Action:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return Action("status", code, {"api_id": str(uuid.uuid4()), "error": error}, headers)


def raw(code: int, body: bytes) -> Action:
    return Action("raw", code, {"raw": body.decode()})


def hang() -> Action:
    return Action("hang")


def drop() -> Action:
    return Action("drop")


@dataclass
class Call:
    method: str
    path: str
    authorization: str | None
    content_type: str | None
    json: Any
    query: dict[str, str]
    at: float
    client_port: int  # the caller's end of the connection: which process sent it (`ss`)


@dataclass
class Mdr:
    message_uuid: str
    to_number: str
    from_number: str
    message_time: datetime
    message_state: str = "queued"
    error_code: str | None = None

    def json(self) -> dict[str, Any]:
        return {
            "api_id": str(uuid.uuid4()),
            "message_uuid": self.message_uuid,
            "message_state": self.message_state,
            "message_direction": "outbound",
            "message_type": "mms",
            "to_number": self.to_number,
            "from_number": self.from_number,
            "error_code": self.error_code,
            "message_time": self.message_time.strftime("%Y-%m-%d %H:%M:%S.%f+00:00"),
        }


class FakePlivo:
    def __init__(self, auth_id: str = AUTH_ID, auth_token: str = AUTH_TOKEN) -> None:
        self.auth_id = auth_id
        self.expected_auth = (
            "Basic " + base64.b64encode(f"{auth_id}:{auth_token}".encode()).decode()
        )
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.reset()

    # Programming -----------------------------------------------------------------------
    def reset(self) -> None:
        with self._lock:
            self.queue: deque[Action] = deque()
            self.default = Action()
            self.calls: list[Call] = []
            self.mdrs: dict[str, Mdr] = {}
            self.in_flight = 0
            self.max_in_flight = 0
            self.lookups_fail = False  # Message Get / list answer 500

    def script(self, *actions: Action) -> None:
        """The next message requests get these actions, in order; then the default."""
        with self._lock:
            self.queue.extend(actions)

    def set_default(self, action: Action) -> None:
        with self._lock:
            self.default = action

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def sends(self) -> list[Call]:
        return [c for c in self.calls if c.method == "POST" and c.path.endswith("/Message/")]

    def lookups(self) -> list[Call]:
        return [c for c in self.calls if c.method == "GET"]

    # Server ------------------------------------------------------------------------------
    def _next_action(self) -> Action:
        with self._lock:
            return self.queue.popleft() if self.queue else self.default

    def _record(self, request: web.Request, body: Any) -> None:
        with self._lock:
            self.calls.append(
                Call(
                    request.method,
                    request.path,
                    request.headers.get("Authorization"),
                    request.headers.get("Content-Type"),
                    body,
                    dict(request.query),
                    time.time(),
                    request.transport.get_extra_info("peername")[1] if request.transport else 0,
                )
            )

    async def _message(self, request: web.Request) -> web.StreamResponse:
        raw_body = await request.read()
        try:
            body = orjson.loads(raw_body) if raw_body else None
        except orjson.JSONDecodeError:
            body = raw_body.decode(errors="replace")
        self._record(request, body)
        if request.headers.get("Authorization") != self.expected_auth or (
            request.match_info["auth_id"] != self.auth_id
        ):
            return _json(401, {"api_id": str(uuid.uuid4()), "error": "Authentication failed"})
        action = self._next_action()
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if action.delay:
                await asyncio.sleep(action.delay)
            if action.release is not None:
                await asyncio.to_thread(action.release.wait, 60)
            if action.kind == "hang":
                await asyncio.sleep(3600)
            if action.kind in ("drop", "accept_then_drop"):
                if action.kind == "accept_then_drop":
                    self._accept(body)
                assert request.transport is not None
                request.transport.abort()  # the request was read: it is "sent"
                raise asyncio.CancelledError
            if action.kind == "status":
                return _json(action.status, action.body or {}, action.headers)
            if action.kind == "raw":
                return web.Response(
                    status=action.status,
                    body=(action.body or {})["raw"].encode(),
                    content_type="application/json",
                )
            return self._accept(body, action.uuid)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _accept(self, body: Any, message_uuid: str | None = None) -> web.Response:
        if not isinstance(body, dict) or not body.get("src") or not body.get("dst"):
            return _json(400, {"api_id": str(uuid.uuid4()), "error": "src and dst are required"})
        message_uuid = message_uuid or str(uuid.uuid4())
        with self._lock:
            self.mdrs[message_uuid] = Mdr(
                message_uuid,
                str(body["dst"]).lstrip("+"),
                str(body["src"]).lstrip("+"),
                datetime.now(UTC),
            )
        return _json(
            202,
            {
                "api_id": str(uuid.uuid4()),
                "message": "message(s) queued",
                "message_uuid": [message_uuid],
            },
        )

    async def _get(self, request: web.Request) -> web.Response:
        self._record(request, None)
        if self.lookups_fail:
            return _json(500, {"api_id": str(uuid.uuid4()), "error": "injected"})
        mdr = self.mdrs.get(request.match_info["uuid"])
        if mdr is None:
            return _json(404, {"api_id": str(uuid.uuid4()), "error": "not found"})
        return _json(200, mdr.json())

    async def _list(self, request: web.Request) -> web.Response:
        self._record(request, None)
        if self.lookups_fail:
            return _json(500, {"api_id": str(uuid.uuid4()), "error": "injected"})
        q = request.query
        since = _parse(q.get("message_time__gte")) or datetime.min.replace(tzinfo=UTC)
        until = _parse(q.get("message_time__lte")) or datetime.max.replace(tzinfo=UTC)
        with self._lock:
            found = [
                m.json()
                for m in self.mdrs.values()
                if (not q.get("to_number") or m.to_number == q["to_number"])
                and since <= m.message_time.replace(microsecond=0) <= until
            ]
        return _json(
            200,
            {"api_id": str(uuid.uuid4()), "meta": {"total_count": len(found)}, "objects": found},
        )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/Account/{auth_id}/Message/", self._message)
        app.router.add_get("/v1/Account/{auth_id}/Message/", self._list)
        app.router.add_get("/v1/Account/{auth_id}/Message/{uuid}/", self._get)
        return app

    def start(self, port: int = 0) -> FakePlivo:
        started = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.5)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", port)
            loop.run_until_complete(site.start())
            server = site._server
            assert server is not None and server.sockets
            self.port = server.sockets[0].getsockname()[1]
            started.set()
            loop.run_forever()
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-plivo", daemon=True)
        self._thread.start()
        started.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)


def _json(code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=code, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def _parse(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="fake Plivo on loopback")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    fake = FakePlivo().start(args.port)
    print(f"fake Plivo on {fake.url} (auth id {fake.auth_id})", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        fake.stop()
