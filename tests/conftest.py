"""Shared fixtures: settings, the fake Plivo, and an app with its lifespan running."""

from __future__ import annotations

import asyncio
import compileall
import functools
import itertools
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.__main__ import main as app_main
from app.config import Settings
from app.main import create_app
from app.store.db import Database
from tests import helpers
from tests.fakeplivo import AUTH_ID, AUTH_TOKEN, FakePlivo
from tests.helpers import (  # noqa: F401  (re-exported: older tests import them from here)
    API_KEYS,
    KEY_A,
    KEY_B,
    SENDER,
    VALID,
    asgi_client,
    psql,
)
from tests.pgschemas import SchemaPool

# Tests configure the service explicitly: nothing from the developer's shell leaks in.
for _name in Settings.model_fields:
    os.environ.pop(_name.upper(), None)


def pytest_configure(config: pytest.Config) -> None:
    """Byte-compile app/ once, before any test starts `python -m app` (dozens do). With
    PYTHONDONTWRITEBYTECODE=1 (set on some machines and in the image) every start would
    compile it again (~0.5 s); `make run` does the same. Once per run: not in xdist workers."""
    if not hasattr(config, "workerinput"):
        compileall.compile_dir(Path(__file__).resolve().parent.parent / "app", quiet=1)


def _schedule_rank(item: pytest.Item) -> int:
    if item.get_closest_marker("xdist_group"):
        return 0
    if item.get_closest_marker("slow"):
        return 1
    fixtures = getattr(item, "fixturenames", ())
    if item.get_closest_marker("e2e") or "server_factory" in fixtures:
        return 2
    return 3


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest first, for `make test`'s workers (`--no-loadscope-reorder` keeps this order):
    the `xdist_group` tests, each group one worker's serial chain (the fleet's is the suite's
    longest); the `slow` ones; those that start `python -m app` processes (seconds each);
    then the in-process rest, which fills the gaps at the end. A worker is handed more tests
    whenever two of its own are left, so a long one at the end would hold the whole run."""
    items.sort(key=_schedule_rank)


# How much the other workers yield the CPU to the groups' chains (see below).
UNGROUPED_NICENESS = 10


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Under xdist, a worker lowers its priority (and its servers') before its first test
    outside an `xdist_group`: the fleet's chain is timed (leases, a paced drain) and sets
    the suite's wall time, so on a busy machine it gets the cores first; the rest mostly
    waits on sockets and subprocesses, and takes what is left."""
    if "PYTEST_XDIST_WORKER" not in os.environ or item.get_closest_marker("xdist_group"):
        return
    if os.getpriority(os.PRIO_PROCESS, 0) < UNGROUPED_NICENESS:
        os.setpriority(os.PRIO_PROCESS, 0, UNGROUPED_NICENESS)


@pytest.fixture(scope="session")
def fake_plivo_server() -> Iterator[FakePlivo]:
    fake = FakePlivo().start()
    yield fake
    fake.stop()


@pytest.fixture
def fake_plivo(fake_plivo_server: FakePlivo) -> FakePlivo:
    fake_plivo_server.reset()
    return fake_plivo_server


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database, built once; tests get copies (migrating costs ~0.1 s)."""
    path = tmp_path_factory.mktemp("template") / "mms.db"

    async def build() -> None:
        db = Database(f"sqlite+aiosqlite:///{path}")
        await db.start()
        await db.close()

    asyncio.run(build())
    return path


@pytest.fixture
def sqlite_url(migrated_sqlite: Path, tmp_path: Path) -> str:
    target = tmp_path / "mms.db"
    shutil.copy(migrated_sqlite, target)
    return f"sqlite+aiosqlite:///{target}"


@pytest.fixture
def settings_factory(fake_plivo: FakePlivo, sqlite_url: str) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": sqlite_url,
            "plivo_auth_id": AUTH_ID,
            "plivo_auth_token": AUTH_TOKEN,
            "plivo_sender_number": SENDER,
            "plivo_api_url": fake_plivo.url,
            "plivo_timeout_seconds": 3,
            "log_level": "warning",
            # The tests' media URLs (example.com...) are served by no one; the preflight's
            # own tests (tests/test_media.py) turn it on against a local media server.
            "media_preflight": False,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return make


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory()


def _state_per_request(app: Any, lifespan_state: dict[str, Any]) -> Any:
    """Give each request its own copy of the lifespan state, as ASGI servers do.

    asgi-lifespan hands every request the *same* state dict, so what one request left in
    `scope["state"]` (an error `code`, a `to`) would leak into the next one's log line
    and metrics; uvicorn copies it per request (the ASGI spec says "a copy"). The state
    the lifespan filled is kept in `lifespan_state`, for tests to reach the services.
    """

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            lifespan_state["state"] = scope["state"]
        elif scope["type"] == "http" and "state" in scope:
            scope = {**scope, "state": dict(scope["state"])}
        await app(scope, receive, send)

    return wrapped


async def _running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    lifespan_state: dict[str, Any] = {}
    manager = LifespanManager(
        _state_per_request(app, lifespan_state), startup_timeout=30, shutdown_timeout=30
    )
    async with manager, asgi_client(manager.app) as c:
        c.app_running = manager.app  # type: ignore[attr-defined]  # for more clients
        c.fastapi_app = app  # type: ignore[attr-defined]  # for dependency_overrides
        c.services = lifespan_state["state"]["services"]  # type: ignore[attr-defined]
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


def _redis_available(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


def _worker_redis_url() -> str:
    """Database 11 for the first pytest-xdist worker (or no xdist), 10 for the second, and so
    on down (5 for `make test`'s seventh): workers never flush each other's keys (the fleet
    tests use 12-15)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return f"redis://127.0.0.1:6379/{11 - int(worker.removeprefix('gw'))}"


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A private Redis database on the machine's real server, flushed before and after.

    Skips on a laptop without Redis; never in CI (CI=true), where Redis is required.
    """
    import redis

    url = os.environ.get("TEST_REDIS_URL") or _worker_redis_url()
    if not _redis_available(url):
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis is required in CI but {url} is unreachable")
        pytest.skip(f"Redis not reachable at {url}")
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@functools.cache
def _postgres_available() -> bool:
    try:
        return psql("SELECT 1").strip() == "1"
    except (OSError, subprocess.SubprocessError):
        return False


def _require_postgres() -> None:
    """Skips on a laptop without PostgreSQL; never in CI (CI=true)."""
    if not _postgres_available():
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL is required in CI but 127.0.0.1:5432 is unreachable")
        pytest.skip("PostgreSQL not reachable at 127.0.0.1:5432")


@pytest.fixture(scope="session")
def postgres_schemas() -> Iterator[SchemaPool]:
    pool = SchemaPool()
    yield pool
    pool.close()


@pytest.fixture
def postgres_url(postgres_schemas: SchemaPool) -> Iterator[str]:
    """A private schema on the machine's real PostgreSQL, already migrated (tests/pgschemas.py).

    The schema belongs to a role of the same name, so PostgreSQL's default search_path
    ("$user", public) puts the service's tables there with nothing but the URL configured.
    """
    _require_postgres()
    url = postgres_schemas.migrated()
    yield url
    postgres_schemas.finished(url)


@pytest.fixture
def empty_postgres_url(postgres_schemas: SchemaPool) -> Iterator[str]:
    """Like `postgres_url`, with no tables yet: for the tests of the migrations."""
    _require_postgres()
    url = postgres_schemas.empty()
    yield url
    postgres_schemas.finished(url)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest) -> str:
    """Run the test on both stores: same code, same tests."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture(params=["sqlite", "postgres"])
def empty_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Both stores with nothing in them yet: for the tests of the migrations."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/fresh.db"
    return str(request.getfixturevalue("empty_postgres_url"))


# The fleet: deploy/compose.yaml's replicas behind deploy/nginx/nginx.conf, on loopback
# (tests/fleet.py). Imported lazily: tests.fleet is only needed by the fleet tests.
@pytest.fixture(scope="module")
def fleets(
    fake_plivo_server: FakePlivo,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_schemas: SchemaPool,
) -> Iterator[Any]:
    """The module's fleets (tests/fleet.py `Fleets`), under the machine-wide fleet lock."""
    import shutil

    from tests import fleet as harness

    harness.require(
        shutil.which("nginx") is not None, "nginx not installed (apt-get install nginx)"
    )
    _require_postgres()
    with harness.fleet_lock():
        harness.map_hosts()
        fleets = harness.Fleets(
            fake_plivo_server,
            tmp_path_factory.mktemp("fleets"),
            api_keys=API_KEYS,
            schemas=postgres_schemas,
        )
        try:
            yield fleets
        finally:
            fleets.stop()


@pytest.fixture
def start_fleet(fleets: Any, fake_plivo: FakePlivo) -> Iterator[Callable[..., Any]]:
    """`start_fleet(RATE_LIMIT="5/minute", ...)` -> a running Fleet, for this test.

    Each fleet has its own database on the machine's Redis (emptied before each test) and
    its own PostgreSQL schema; `redis_port=` points the replicas at a private redis-server
    instead. Consecutive tests with the same settings share one fleet (`Fleets`).
    """
    yield fleets.get
    fleets.after_test()


@pytest.fixture
def fleet(start_fleet: Callable[..., Any]) -> Any:
    """A running fleet with compose.yaml's settings: `.url` (nginx), `.replicas`, `.fake`."""
    return start_fleet()


@pytest.fixture
def server_factory(fake_plivo: FakePlivo, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """`server_factory(**env)` starts `python -m app` (stopped after the test); each call on
    the same test shares the SQLite file, so a second call is a restart. Calls may come from
    several threads, to start processes side by side."""
    from tests.server import Server, base_env

    started: list[Server] = []
    numbers = itertools.count()

    def start(**overrides: Any) -> Server:
        env = base_env(fake_plivo.url, DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/mms.db")
        env.update({k.upper(): str(v) for k, v in overrides.items()})
        server = Server(env, tmp_path / f"server{next(numbers)}.log")
        started.append(server)
        return server.wait_healthy()

    yield start
    for server in started:
        server.kill()


@pytest.fixture(scope="module")
def module_server_factory(
    fake_plivo_server: FakePlivo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Any]]:
    """Like `server_factory`, for processes that a module's tests share (tests that only read
    from them, or each on its own data): one start instead of one per test."""
    from tests.server import Server, base_env

    started: list[Server] = []

    def start(**overrides: Any) -> Server:
        path = tmp_path_factory.mktemp("server")
        env = base_env(fake_plivo_server.url, DATABASE_URL=f"sqlite+aiosqlite:///{path}/mms.db")
        env.update({k.upper(): str(v) for k, v in overrides.items()})
        server = Server(env, path / "server.log")
        started.append(server)
        return server.wait_healthy()

    yield start
    for server in started:
        server.kill()


@pytest.fixture
def app_command(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> Any:
    """`await app_command(store_url, "optouts", "list")`: `python -m app`'s entry point, in
    this process, with the environment and argv an operator's process gets
    (`tests.helpers.app_process` starts the real one): the same behaviour without an
    interpreter start each."""
    for name, value in helpers.command_env("").items():
        if name.lower() in Settings.model_fields:
            monkeypatch.setenv(name, value)

    async def run(store_url: str, *argv: str) -> helpers.Done:
        monkeypatch.setenv("DATABASE_URL", store_url)
        capfd.readouterr()
        code = await asyncio.to_thread(app_main, list(argv))
        out, err = capfd.readouterr()
        return helpers.Done(code, out, err)

    return run


@pytest.fixture
def fast_reconciler(monkeypatch: pytest.MonkeyPatch) -> None:
    """An idle reconciler looks for due messages every 0.1 s instead of every 2 s: tests that
    wait for a lookup wait for the lookup, not for the poll period."""
    from app.reconcile import Reconciler

    monkeypatch.setattr(Reconciler, "idle_poll_seconds", 0.1)
