"""Shared fixtures: settings, the fake Plivo, and an app with its lifespan running."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from tests.fakeplivo import AUTH_ID, AUTH_TOKEN, FakePlivo

# Tests configure the service explicitly: nothing from the developer's shell leaks in.
for _name in Settings.model_fields:
    os.environ.pop(_name.upper(), None)

SENDER = "+14155550000"
VALID = {"to": "+14155550100", "media_urls": ["https://example.com/a.png"], "text": "hello"}


@pytest.fixture(scope="session")
def fake_plivo_server() -> Iterator[FakePlivo]:
    fake = FakePlivo().start()
    yield fake
    fake.stop()


@pytest.fixture
def fake_plivo(fake_plivo_server: FakePlivo) -> FakePlivo:
    fake_plivo_server.reset()
    return fake_plivo_server


@pytest.fixture
def settings_factory(fake_plivo: FakePlivo, tmp_path: Any) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "plivo_auth_id": AUTH_ID,
            "plivo_auth_token": AUTH_TOKEN,
            "plivo_sender_number": SENDER,
            "plivo_api_url": fake_plivo.url,
            "plivo_timeout_seconds": 3,
            "log_level": "warning",
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return make


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory()


async def _running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _running(create_app(settings)):
        yield c


@pytest.fixture
def client_for() -> Callable[[Settings], Any]:
    """`async with client_for(settings) as c:` — an app with its own configuration."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def make(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
        async for c in _running(create_app(settings)):
            yield c

    return make
