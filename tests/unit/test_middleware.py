"""The two pure ASGI middlewares on a toy Starlette app: no service, no store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.middleware import MAX_BODY_BYTES, BodyLimitMiddleware, RequestContextMiddleware


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"bytes": len(body), "rid": request.scope["state"]["request_id"]})


async def boom(request: Request) -> JSONResponse:
    raise RuntimeError("a bug")


def toy_app(observed: list[tuple[str, int]]) -> Any:
    app = Starlette(routes=[Route("/echo", echo, methods=["POST"]), Route("/boom", boom)])
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(
        RequestContextMiddleware,
        observe=lambda scope, route, status, seconds: observed.append((route, status)),
    )
    return app


@pytest.fixture
def observed() -> list[tuple[str, int]]:
    return []


@pytest.fixture
async def client(observed) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=toy_app(observed), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://toy") as c:
        yield c


async def test_a_safe_request_id_is_kept(client):
    response = await client.post("/echo", content=b"x", headers={"X-Request-ID": "abc.DEF:1-2_3"})
    assert response.headers["x-request-id"] == "abc.DEF:1-2_3"
    assert response.json()["rid"] == "abc.DEF:1-2_3"


@pytest.mark.parametrize("unsafe", ["a b", "x" * 129, "semi;colon", 'quote"d'])
async def test_an_unsafe_request_id_is_replaced(client, unsafe):
    response = await client.post("/echo", content=b"x", headers={"X-Request-ID": unsafe})
    rid = response.headers["x-request-id"]
    assert rid != unsafe and rid == response.json()["rid"] and 0 < len(rid) <= 128


async def test_a_generated_id_when_none_is_sent(client):
    first = (await client.post("/echo", content=b"x")).headers["x-request-id"]
    second = (await client.post("/echo", content=b"x")).headers["x-request-id"]
    assert first and second and first != second


async def test_an_unhandled_error_is_a_problem_500_with_the_request_id(client, observed):
    response = await client.get("/boom", headers={"X-Request-ID": "rid-1"})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["x-request-id"] == "rid-1"
    body = response.json()
    assert body["code"] == "internal_error" and body["requestId"] == "rid-1"
    assert "a bug" not in response.text  # no exception text, no stack trace
    assert observed == [("/boom", 500)]


async def test_every_request_is_observed_with_its_route_template(client, observed):
    await client.post("/echo", content=b"x")
    await client.get("/nowhere")
    assert observed == [("/echo", 200), ("unmatched", 404)]


async def test_a_body_at_the_limit_passes(client):
    response = await client.post("/echo", content=b"x" * MAX_BODY_BYTES)
    assert response.status_code == 200 and response.json()["bytes"] == MAX_BODY_BYTES


async def test_a_declared_length_over_the_limit_is_413_before_reading(client):
    response = await client.post("/echo", content=b"x" * (MAX_BODY_BYTES + 1))
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


async def test_a_chunked_body_over_the_limit_is_413(client):
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"x" * (MAX_BODY_BYTES // 4)

    response = await client.post("/echo", content=chunks())
    assert "content-length" not in response.request.headers
    # Raised from `receive` mid-body; the toy app's own handler renders it (the service's
    # handler turns the same exception into a problem body: tests/mms/test_validation.py).
    assert response.status_code == 413
