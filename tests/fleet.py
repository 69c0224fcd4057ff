"""A fleet on loopback: deploy/compose.yaml's app replicas behind deploy/nginx/nginx.conf.

No Docker engine here, so the fleet is built from the same two files, on loopback:

- hostnames: the compose service names are mapped in /etc/hosts (added once, kept): each
  replica gets a loopback address of its own, as each container has an IP of its own, and
  `redis`, `postgres` and `nginx` are the machine's own services on 127.0.0.1;
- replicas: `python -m app` with the app service's `environment` read from compose.yaml
  (`${...}` filled with test values), changed only where loopback must differ
  (`replica_env`);
- nginx: Debian's nginx running deploy/nginx/nginx.conf unchanged, in a temp prefix;
- clients connect to nginx from 127.0.0.2, an address nobody trusts, so X-Forwarded-For
  handling is real.

The fixed ports (3000 per replica, 8080 for nginx) allow one fleet at a time per machine:
`fleet_lock` serialises concurrent test runs. Fixtures: `start_fleet` / `fleet` in conftest.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis
import yaml

from tests.fakeplivo import AUTH_ID, AUTH_TOKEN, FakePlivo
from tests.loopback import TLS
from tests.server import ROOT, Server, base_env

COMPOSE = ROOT / "deploy" / "compose.yaml"
NGINX_CONF = ROOT / "deploy" / "nginx" / "nginx.conf"

HOSTS = {
    "app-1": "127.0.0.11",
    "app-2": "127.0.0.12",
    "redis": "127.0.0.1",
    "postgres": "127.0.0.1",
    "nginx": "127.0.0.1",
}
# The address nginx connects to the replicas from. No `proxy_bind`: the kernel picks the
# source from the loopback route (`local 127.0.0.0/8 dev lo ... src 127.0.0.1`), checked with
# `ss -tn` while nginx held keep-alive connections to 127.0.0.11/12.
NGINX_SOURCE = "127.0.0.1"
NGINX_PORT = 8080  # `listen` in nginx.conf, published as is by compose.yaml
APP_PORT = 3000  # the image's PORT
CLIENT = "127.0.0.2"  # not in FORWARDED_ALLOW_IPS: an ordinary client
SENDER = "+14155550000"
# Redis databases the fleet tests may flush (the other Redis tests use 11).
FLEET_REDIS_DBS = (12, 13, 14, 15)
LOCK_PATH = Path(tempfile.gettempdir()) / "mms-gateway-fleet.lock"


def require(ok: bool, reason: str) -> None:
    """Skip when the machine lacks something, except in CI (CI=true), where it is a failure."""
    if ok:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"fleet tests need this in CI: {reason}")
    pytest.skip(reason)


@contextlib.contextmanager
def fleet_lock(timeout: float = 600.0) -> Iterator[None]:
    """One fleet at a time on this machine (fixed ports); waits for another test run's."""
    with LOCK_PATH.open("a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another fleet held {LOCK_PATH} for {timeout}s") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# Hostnames -----------------------------------------------------------------------------------
def _hosts_entries(text: str) -> dict[str, str]:
    entries: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        for name in fields[1:]:
            entries.setdefault(name, fields[0])  # the first line naming a host wins
    return entries


def map_hosts(hosts_file: Path = Path("/etc/hosts")) -> None:
    """Add the compose hostnames to /etc/hosts where missing; never rewrite existing lines."""
    entries = _hosts_entries(hosts_file.read_text())
    clashes = {n: entries[n] for n, a in HOSTS.items() if n in entries and entries[n] != a}
    if clashes:
        raise RuntimeError(f"{hosts_file} maps {clashes}; the fleet tests need {HOSTS}")
    missing = {n: a for n, a in HOSTS.items() if n not in entries}
    if not missing:
        return
    require(os.access(hosts_file, os.W_OK), f"add to {hosts_file} (needs root): {missing}")
    text = hosts_file.read_text()
    with hosts_file.open("a") as handle:
        if text and not text.endswith("\n"):
            handle.write("\n")
        for name, address in missing.items():
            handle.write(f"{address} {name}  # mms-gateway fleet tests (tests/fleet.py)\n")


# Compose -------------------------------------------------------------------------------------
def compose_spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())  # resolves anchors and `<<`
    return spec


def replica_names(spec: Mapping[str, Any]) -> list[str]:
    """The services built from our Dockerfile: app-1, app-2, ..."""
    return sorted(name for name, service in spec["services"].items() if "build" in service)


# The forms compose.yaml uses: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}.
_INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: str, values: Mapping[str, str]) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match["name"]
        if name in values:
            return values[name]
        if match["op"] in (":-", "-"):
            return match["arg"]
        raise KeyError(f"compose.yaml needs ${{{name}}}: give tests/fleet.py a test value for it")

    return _INTERPOLATION.sub(substitute, value)


def compose_app_env(service: str, values: Mapping[str, str]) -> dict[str, str]:
    """The service's `environment` from compose.yaml, interpolated with `values`."""
    environment = compose_spec()["services"][service]["environment"]
    assert isinstance(environment, dict), "keep `environment` a mapping in compose.yaml"
    return {key: interpolate(str(value), values) for key, value in environment.items()}


def with_db(url: str, db: int, port: int | None = None) -> str:
    """The same redis:// URL (host `redis` kept) with another database (and port)."""
    parts = urlsplit(url)
    netloc = parts.netloc if port is None else f"{parts.hostname}:{port}"
    return parts._replace(netloc=netloc, path=f"/{db}").geturl()


def with_role(url: str, role: str) -> str:
    """compose's postgresql URL (host `postgres` kept) as a per-test role and schema."""
    parts = urlsplit(url)
    return parts._replace(
        netloc=f"{role}@{parts.hostname}:{parts.port or 5432}", path="/test"
    ).geturl()


def replica_env(
    service: str,
    fake: FakePlivo,
    api_keys: str,
    redis_db: int,
    redis_port: int | None,
    database_role: str,
) -> dict[str, str]:
    """compose.yaml's environment for `service`, as the replica on loopback runs it."""
    values = {  # what the operator would export before `docker compose up`
        "PLIVO_AUTH_ID": AUTH_ID,
        "PLIVO_AUTH_TOKEN": AUTH_TOKEN,
        "PLIVO_SENDER_NUMBER": SENDER,
        "PLIVO_API_URL": fake.url,
        "API_KEYS": api_keys,
        "PUBLIC_BASE_URL": f"http://nginx:{NGINX_PORT}",
    }
    env = base_env(fake.url)  # the test process's environment minus any app setting
    env.update(compose_app_env(service, values))
    env.update(
        # Each container has an address of its own; on loopback each replica gets one, too.
        HOST=HOSTS[service],
        # The image's ENV (not part of compose's `environment`).
        PORT=str(APP_PORT),
        # nginx reaches the replicas from 127.0.0.1 here, from its fixed address in compose.
        FORWARDED_ALLOW_IPS=NGINX_SOURCE,
        # The machine's one Redis is shared with other tests: same URL, a database per test
        # (or the outage test's private redis-server on its own port).
        RATE_LIMIT_STORAGE_URL=with_db(env["RATE_LIMIT_STORAGE_URL"], redis_db, redis_port),
        # The machine's one PostgreSQL: same host, a role and schema of its own per test.
        DATABASE_URL=with_role(env["DATABASE_URL"], database_role),
    )
    return env


# Processes -----------------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM, bounded wait, then SIGKILL (its children too, by PID: nginx's workers)."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        for child in _children(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        proc.kill()
        proc.wait(10)


class Nginx:
    """Debian's nginx with the repo's nginx.conf, unchanged, in a private prefix."""

    def __init__(self, prefix: Path) -> None:
        prefix.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.log_path = prefix / "access.log"  # nginx.conf logs to stdout
        self.error_log = prefix / "error.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self, *extra: str) -> list[str]:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        options = f"daemon off; pid {self.prefix}/nginx.pid; error_log {self.error_log} info;"
        return [nginx, "-c", str(NGINX_CONF), "-p", f"{self.prefix}/", "-g", options, *extra]

    def check_config(self) -> None:
        """`nginx -t`: the syntax, and that every upstream name resolves."""
        done = subprocess.run(self.command("-t"), capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"nginx -t failed:\n{done.stdout}{done.stderr}")

    def start(self, url: str, timeout: float = 15.0) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        with client(url) as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"nginx exited {self.proc.returncode}:\n{self.logs()}")
                with contextlib.suppress(httpx.HTTPError):
                    if http.get("/health", timeout=1).status_code == 200:
                        return
                time.sleep(0.1)
        raise RuntimeError(f"nginx did not proxy /health within {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        paths = (self.log_path, self.error_log)
        return "".join(p.read_text(errors="replace") for p in paths if p.exists())

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


class RedisServer:
    """A private redis-server on its own port, without persistence, stopped by PID."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir, self.port = workdir, port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        with (self.workdir / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(
                ["redis-server", *args, "--dir", str(self.workdir)], stdout=log, stderr=log
            )
        ping = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited {self.proc.returncode}")
                with contextlib.suppress(redis.RedisError):
                    if ping.ping():
                        return self
                time.sleep(0.05)
        finally:
            ping.close()
        raise RuntimeError(f"redis-server on port {self.port} not up within {timeout}s")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


# The fleet -----------------------------------------------------------------------------------
def client(url: str, source: str = CLIENT, **kwargs: Any) -> httpx.Client:
    """An HTTP client whose connections leave from `source` (127.0.0.2: untrusted)."""
    transport = httpx.HTTPTransport(local_address=source, verify=TLS)  # tests/loopback.py
    return httpx.Client(base_url=url, transport=transport, trust_env=False, timeout=20, **kwargs)


@dataclass
class Replica:
    name: str  # the compose service
    server: Server
    env: dict[str, str] = field(default_factory=dict, repr=False)  # to restart it
    restarts: int = 0
    since: int = 0  # where the current test's part of its log begins (a fleet is reused)

    def restart(self) -> None:
        """Start it again after a kill: same address, same settings, a log of its own."""
        self.restarts += 1
        log_path = self.server.log_path.with_suffix(f".{self.restarts}.log")
        self.server = Server(dict(self.env), log_path).wait_healthy()
        self.since = 0  # a new log

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def pid(self) -> int:
        return self.server.proc.pid

    def logs(self) -> str:
        return self.server.logs()

    def events(self, event: str | None = None, since: int | None = None) -> list[dict[str, Any]]:
        """Its JSON log lines (from character `since` of logs(), by default from the start of
        the current test), optionally one event only."""
        found = []
        text = self.logs()[self.since if since is None else since :]
        for line in text[: text.rfind("\n") + 1].splitlines():  # complete lines only
            if line.startswith("{"):
                record = json.loads(line)
                if event is None or record.get("event") == event:
                    found.append(record)
        return found

    def sends(self, since: int | None = None) -> list[dict[str, Any]]:
        """The request lines of the send route it served (by default, in the current test)."""
        return [r for r in self.events("request", since) if r.get("route") == "/api/mms/send"]


@dataclass
class Fleet:
    url: str  # nginx
    replicas: list[Replica]
    fake: FakePlivo
    nginx: Nginx
    redis_url: str = ""
    schema: str = ""  # the replicas' PostgreSQL schema (and role): a reused fleet keeps its own
    _stopped: bool = field(default=False, repr=False)

    def client(self, source: str = CLIENT, **kwargs: Any) -> httpx.Client:
        return client(self.url, source, **kwargs)

    def marks(self) -> list[int]:
        """Where each replica's log ends now: pass to `events(since=...)`."""
        return [len(r.logs()) for r in self.replicas]

    def alive(self) -> bool:
        procs = [self.nginx.proc, *(r.server.proc for r in self.replicas)]
        return not self._stopped and all(p is not None and p.poll() is None for p in procs)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            self.nginx.stop()
        finally:
            for replica in self.replicas:  # SIGTERM all first: they drain in parallel
                if replica.server.proc.poll() is None:
                    replica.server.proc.send_signal(signal.SIGTERM)
            for replica in self.replicas:
                try:
                    replica.server.terminate(timeout=30)
                except subprocess.TimeoutExpired:
                    replica.server.kill()


def start_fleet(
    fake: FakePlivo,
    workdir: Path,
    *,
    api_keys: str,
    redis_db: int,
    database_role: str,
    redis_port: int | None = None,
    **settings: Any,
) -> Fleet:
    """Start every compose replica, then nginx; `settings` are the test's own knobs."""
    workdir.mkdir(parents=True, exist_ok=True)
    servers: list[Replica] = []
    nginx = Nginx(workdir / "nginx")
    redis_url = ""
    try:
        for name in replica_names(compose_spec()):
            env = replica_env(name, fake, api_keys, redis_db, redis_port, database_role)
            env.update({k.upper(): str(v) for k, v in settings.items()})
            redis_url = env["RATE_LIMIT_STORAGE_URL"]
            # Started like the image: from a directory with nothing but what it is given
            # (no stray .env), the code on PYTHONPATH.
            env.update(_CWD=str(workdir), PYTHONPATH=str(ROOT))
            servers.append(Replica(name, Server(dict(env), workdir / f"{name}.log"), env))
        for replica in servers:
            replica.server.wait_healthy()
        nginx.check_config()
        url = f"http://nginx:{NGINX_PORT}"
        nginx.start(url)
    except BaseException:
        Fleet("", servers, fake, nginx).stop()
        raise
    return Fleet(url, servers, fake, nginx, redis_url, database_role)


_next_db = itertools.cycle(FLEET_REDIS_DBS)


def redis_url_for(db: int) -> str:
    """compose's Redis URL (host `redis`, mapped to the machine's) with database `db`."""
    spec = compose_spec()
    compose_url = spec["services"][replica_names(spec)[0]]["environment"]["RATE_LIMIT_STORAGE_URL"]
    return with_db(compose_url, db)


@contextlib.contextmanager
def flushed_redis_db() -> Iterator[int]:
    """A database of the machine's Redis, emptied before and after; refuses foreign keys.

    Consecutive tests get different databases, so leftovers could not leak between them.
    """
    db = next(_next_db)
    url = redis_url_for(db)
    client_ = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client_.ping()
    except redis.RedisError as exc:
        client_.close()
        require(False, f"Redis not reachable at {url}: {exc}")
    try:
        foreign = [k for k in client_.scan_iter(count=500) if not k.startswith(b"mms-gateway")]
        if foreign:
            raise RuntimeError(f"{url} holds keys that are not ours, e.g. {foreign[:3]}")
        client_.flushdb()
        try:
            yield db
        finally:  # also when the test failed
            client_.flushdb()
    finally:
        client_.close()


class Fleets:
    """The fleets of one test module, one at a time (fixed ports). A test asking for the same
    settings as the test before it gets the same running fleet, with its Redis database
    emptied (rate-limit windows, quota counters), its replicas' logs counted from there, and
    the fake's state already reset by its fixture; PostgreSQL keeps the earlier tests' rows,
    which no fleet test reads (each sends to new numbers, under new keys). A fleet with a
    dead process (a test killed a replica) or a private Redis is never reused."""

    def __init__(self, fake: FakePlivo, workdir: Path, *, api_keys: str, schemas: Any) -> None:
        self.fake, self.workdir, self.api_keys, self.schemas = fake, workdir, api_keys, schemas
        self.current: Fleet | None = None
        self._key: tuple[tuple[str, str], ...] | None = None
        self._stack = contextlib.ExitStack()
        self._redis: redis.Redis | None = None
        self._count = itertools.count()

    def get(self, **settings: Any) -> Fleet:
        key = tuple(sorted((k, str(v)) for k, v in settings.items()))
        if self.current is not None and key == self._key and self.current.alive():
            assert self._redis is not None
            self._redis.flushdb()
            for replica, mark in zip(self.current.replicas, self.current.marks(), strict=True):
                replica.since = mark
            return self.current
        self.stop()
        db = self._stack.enter_context(flushed_redis_db())
        url = self.schemas.migrated()
        self._stack.callback(self.schemas.finished, url)
        self._redis = redis.Redis.from_url(redis_url_for(db))
        self._stack.callback(self._redis.close)
        self.current = start_fleet(
            self.fake,
            self.workdir / f"fleet{next(self._count)}",
            api_keys=self.api_keys,
            redis_db=db,
            database_role=url.split("//")[1].split("@")[0],
            **settings,
        )
        self._stack.callback(self.current.stop)
        self._key = None if "redis_port" in settings else key
        return self.current

    def after_test(self) -> None:
        """Stop a fleet that cannot serve another test."""
        if self.current is not None and (self._key is None or not self.current.alive()):
            self.stop()

    def stop(self) -> None:
        self._stack.close()
        self.current, self._key = None, None
