"""Where a send's CPU goes: py-spy samples `python -m app` under scenario 1's load.

    python benchmarks/profile.py [--duration 20] [--latency-ms 0] [--connections 50]
    make profile     (scenario 1; scenario 2 is --latency-ms 100 --connections 200)

The service runs with every feature on (run.py's SERVICE_ENV, media preflight against the
local media server, one picture: a cache hit per send) on CPU 0; the peer's fake Plivo,
the media server and its load.sh (wrk; 10,000 client addresses, 1,000 destinations) on
CPU 1.
py-spy records on-CPU samples of every thread without pausing the process; the collapsed
stacks are then summed two ways and written to
benchmarks/results/profile.md (profile-100ms.md for scenario 2):

- by layer: each sample goes to the innermost package or module of ours on its stack
  (so the shares add up to 100 %);
- by function: the share of samples that ended in a function (self time), top 25.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import media_server
import run  # the benchmark's helpers: the peer, the fake Plivo, the service

# Layers a send crosses. A sample belongs to the innermost layer on its stack: walking from
# the running function outwards, the first frame whose file (as py-spy shortens it: from the
# package down) contains one of the layer's markers.
LAYERS = [
    ("HTTP server (uvicorn, httptools)", ("uvicorn/",)),
    ("request context middleware (app/middleware.py)", ("app/middleware.py",)),
    ("log line (app/logging.py, structlog)", ("app/logging.py", "structlog/")),
    (
        "limits: per-IP, destination, quota (app/ratelimit.py, limits)",
        ("app/ratelimit.py", "limits/"),
    ),
    ("routing, request parsing (starlette, fastapi)", ("starlette/", "fastapi/")),
    ("auth, dependencies (app/auth.py, app/deps.py)", ("app/auth.py", "app/deps.py")),
    (
        "validation (pydantic, phonenumbers, app/mms/schemas.py)",
        ("pydantic", "phonenumbers/", "app/mms/schemas.py"),
    ),
    ("send service (app/mms/)", ("app/mms/",)),
    ("sender, breaker (app/plivo/)", ("app/plivo/",)),
    ("media preflight (app/media.py)", ("app/media.py",)),
    ("Plivo client I/O (aiohttp, yarl, multidict)", ("aiohttp/", "yarl/", "multidict/")),
    (
        "record, idempotency (app/store/, sqlalchemy, aiosqlite, sqlite3)",
        ("app/store/", "sqlalchemy/", "aiosqlite/", "sqlite3/"),
    ),
    ("metrics (prometheus_client, app/metrics.py)", ("prometheus_client/", "app/metrics.py")),
    ("problem+json errors (app/errors.py)", ("app/errors.py",)),
    ("json (stdlib)", ("json/",)),
]
OTHER = "event loop and the rest (asyncio, stdlib)"
# Leaves of a thread that waits, which py-spy's idle detection takes for work: aiosqlite's
# thread and the store writer's thread blocked on their queues, the loop blocked in epoll.
IDLE_LEAVES = (
    "_connection_worker_thread (aiosqlite/core.py:59)",
    "_worker (concurrent/futures/thread.py:81)",
    "EpollSelector.select (",
)


def idle(frames: list[str]) -> bool:
    return frames[-1].startswith(IDLE_LEAVES)


def record(duration: int, latency: int, connections: int, workdir: Path) -> Path:
    peer = run.prepare_peer(workdir)
    # The service's one webhook endpoint (SERVICE_ENV's WEBHOOKS) answers, as in `make bench`:
    # without it every delivery would fail and retry, and the profile would show that.
    with media_server.serving() as media, run.webhook_receiver():
        return _record(peer, media, duration, latency, connections, workdir)


def _record(
    peer: Path,
    media: media_server.MediaServer,
    duration: int,
    latency: int,
    connections: int,
    workdir: Path,
) -> Path:
    fake = run._fake(peer, latency)
    env = {
        **run.SERVICE_ENV,
        **media.env,
        "DATABASE_URL": run.fresh_sqlite(workdir, "profile"),
        "PLIVO_AUTH_ID": run.AUTH_ID,
        "PLIVO_AUTH_TOKEN": run.AUTH_TOKEN,
        "PLIVO_SENDER_NUMBER": "+14155550000",
        "PLIVO_API_URL": f"http://127.0.0.1:{run.FAKE_PORT}/v1",
    }
    service = run.start_service(env, workdir / "profile-service.log")
    raw = workdir / "profile.txt"
    loader: subprocess.Popen[str] | None = None
    try:
        run.wait_http(f"http://127.0.0.1:{run.PORT}/health")
        load_env = {
            **os.environ,
            "LOAD_AUTHORIZATION": f"Bearer {run.API_KEY}",
            "LOAD_CPUS": "1",
            "LOAD_SPREAD": "1",  # 10,000 clients (X-Forwarded-For), 1,000 destinations
            "LOAD_MEDIA_URL": media.url,
        }
        url = f"http://127.0.0.1:{run.PORT}/api/mms/send"
        load = [str(peer / "load.sh"), url, str(connections)]
        subprocess.run([*load, "5"], env=load_env, check=True, capture_output=True)  # warm-up
        loader = subprocess.Popen(
            [*load, str(duration + 4)], env=load_env, stdout=subprocess.PIPE, text=True
        )
        time.sleep(2)
        subprocess.run(
            [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "--pid",
                str(service.pid),
                "--duration",
                str(duration),
                "--rate",
                "200",
                "--nonblocking",
                "--format",
                "raw",
                "--output",
                str(raw),
            ],
            check=True,
            capture_output=True,
        )
        out, _ = loader.communicate(timeout=duration + 60)
        print("load:", out.strip())
    finally:
        if loader is not None and loader.poll() is None:
            loader.kill()
        run.stop(service)
        run.stop(fake)
    return raw


def summarise(raw: Path, latency_ms: int, connections: int) -> str:
    stacks: list[tuple[list[str], int]] = []
    for line in raw.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        if frames and not idle(frames.split(";")):
            stacks.append((frames.split(";"), int(count)))
    total = sum(n for _, n in stacks) or 1

    layers: collections.Counter[str] = collections.Counter()
    for frames, n in stacks:
        layers[_layer(frames)] += n
    leaf: collections.Counter[str] = collections.Counter()
    for frames, n in stacks:
        leaf[_short(frames[-1])] += n

    lines = [
        f"py-spy, {total} on-CPU samples of `python -m app` (every feature on) under "
        f"{connections} connections, upstream {latency_ms} ms.",
        "",
        "| layer (innermost on the stack) | share of samples |",
        "|---|---|",
        *(f"| {name} | {n / total:.1%} |" for name, n in layers.most_common()),
        "",
        "| function (self time) | share of samples |",
        "|---|---|",
        *(f"| `{name}` | {n / total:.1%} |" for name, n in leaf.most_common(25)),
        "",
    ]
    return "\n".join(lines)


def _layer(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, markers in LAYERS:
            if any(marker in frame for marker in markers):
                return name
    return OTHER


def _short(frame: str) -> str:
    """'send (aiohttp/client.py:512)' with the path cut to its package."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    where = re.sub(r".*?(site-packages/|python3\.\d+/)", "", where)
    where = where.replace(f"{run.ROOT}/", "")
    return f"{name} ({where})" if where else name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--latency-ms", type=int, default=0, help="fake Plivo's delay")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "mms-bench"))
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    raw = record(args.duration, args.latency_ms, args.connections, workdir)
    table = summarise(raw, args.latency_ms, args.connections)
    run.RESULTS.mkdir(parents=True, exist_ok=True)
    name = "profile.md" if args.latency_ms == 0 else f"profile-{args.latency_ms}ms.md"
    (run.RESULTS / name).write_text(table)
    print(table)


if __name__ == "__main__":
    main()
