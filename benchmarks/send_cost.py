"""Instructions per send (callgrind) and where they go (py-spy), every feature on.

    python benchmarks/send_cost.py count [--concurrency 50] [--runs 1] [--app floor]
    python benchmarks/send_cost.py layers [--concurrency 50] [--sends 4000]

`count`: like feature_cost.py's "all features on" row (valgrind's callgrind, SHORT then
LONG sends through the app's ASGI callable, the difference divided by LONG - SHORT), with
the sends either one after the other (`--concurrency 1`, the row feature_cost.py reports:
one commit per record) or `--concurrency` at a time, as scenario 1's 50 connections (the
group-commit writer then shares commits). Instruction counts are the same whatever the
machine's load, so a change is measured before and after on this count, not in req/s.
`--app floor` counts floor.py's `plivo` app the same way (parse the body, POST to Plivo,
answer): the part of a send that is not the service's own work.

`layers`: the same in-process sends, without valgrind, sampled by py-spy; each sample goes
to the innermost layer of profile.py's table on its stack. Multiplied by `count`'s figure
it gives instructions per send per layer.

A fake Plivo (tests/fakeplivo.py) and the media server run in their own processes, on
free ports, so several runs on one machine do not collide.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
SHORT, LONG = 100, 400


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def drive(
    count: int,
    concurrency: int,
    database: str,
    fake_url: str,
    media_url: str,
    limits: str,
    app_name: str = "service",
) -> None:
    """Build the app (every feature on, as feature_cost.py; or floor.py's `plivo` app)
    and send `count` times."""
    sys.path.insert(0, str(ROOT))
    from urllib.parse import urlsplit

    from asgi_lifespan import LifespanManager

    from app.config import Settings
    from app.main import create_app

    if app_name == "floor":
        from floor import FloorApp

        from tests.fakeplivo import AUTH_ID, AUTH_TOKEN

        os.environ.update(
            PLIVO_API_URL=fake_url, PLIVO_AUTH_ID=AUTH_ID, PLIVO_AUTH_TOKEN=AUTH_TOKEN
        )
        app: Any = FloorApp("plivo")
    else:
        app = create_app(
            Settings(
                _env_file=None,
                plivo_auth_id="MAFAKEAUTHID00000000",
                plivo_auth_token="fake-auth-token-0123456789",  # tests/fakeplivo.py's
                plivo_sender_number="+14155550000",
                plivo_api_url=fake_url,
                log_format="json",
                log_level="info",
                database_url=database,
                api_keys="b:bench-0123456789abcdef",
                public_base_url="https://mms.example.com",
                rate_limit="100/minute",
                rate_limit_per_destination="100000/hour",
                daily_quota_per_key=1_000_000_000,
                send_rate="10000/second",
                media_preflight=True,
                media_allow_hosts=urlsplit(media_url).netloc,
                rate_limit_storage_url=limits,
            )
        )

    devnull = open(os.devnull, "w")  # noqa: SIM115 - the log lines are written, then dropped

    async def one(app_: Any, i: int) -> int:
        body = (
            f'{{"to": "+1415555{100 + i % 1000:04d}", "media_urls": ["{media_url}"], '
            f'"text": "hello"}}'
        ).encode()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/api/mms/send",
            "raw_path": b"/api/mms/send",
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"content-type", b"application/json"),
                (b"authorization", b"Bearer bench-0123456789abcdef"),
                (b"content-length", str(len(body)).encode()),
            ],
            "client": (f"10.{i // 62500 % 250}.{i // 250 % 250}.{i % 250 + 1}", 1234),
            "server": ("127.0.0.1", 3000),
            "state": {},
        }
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        statuses: list[int] = []

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            await asyncio.sleep(3600)
            return {}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await app_(scope, receive, send)
        return statuses[0]

    async def run() -> None:
        async with LifespanManager(app, startup_timeout=900, shutdown_timeout=900) as manager:
            sys.stdout = devnull
            slots = asyncio.Semaphore(concurrency)

            async def bounded(i: int) -> int:
                async with slots:
                    return await one(manager.app, i)

            statuses = await asyncio.gather(*(bounded(i) for i in range(count)))
            sys.stdout = sys.__stdout__
            bad = collections.Counter(s for s in statuses if s != 200)
            assert not bad, bad
            print(f"SENT {len(statuses)}", file=sys.stderr)

    asyncio.run(run())


class Servers:
    """The fake Plivo and the media server, each in a process of its own."""

    def __enter__(self) -> Servers:
        import media_server

        port = _free_port()
        self.fake = subprocess.Popen(
            [sys.executable, "-m", "tests.fakeplivo", "--port", str(port)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.fake.stdout is not None
        self.fake.stdout.readline()  # it prints once it listens
        self.fake_url = f"http://127.0.0.1:{port}/v1"
        self._media = media_server.serving(cpus="")
        self.media_url = self._media.__enter__().url
        return self

    def __exit__(self, *exc: Any) -> None:
        self._media.__exit__(None, None, None)
        self.fake.terminate()
        self.fake.wait(10)


def _database(tmp: str) -> str:
    database = f"sqlite+aiosqlite:///{tmp}/cost.db"
    from run import seed_optouts  # the same 100,000-number list as scenarios 1 and 2

    seed_optouts(database)
    return database


def instructions(
    count: int, concurrency: int, servers: Servers, limits: str, app_name: str = "service"
) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        run = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                __file__,
                "--drive",
                json.dumps(
                    [
                        count,
                        concurrency,
                        _database(tmp),
                        servers.fake_url,
                        servers.media_url,
                        limits,
                        app_name,
                    ]
                ),
            ],
            capture_output=True,
            text=True,
            timeout=7200,
        )
        if run.returncode != 0:
            raise RuntimeError(f"the sends failed: {run.stderr[-3000:]}")
        for line in out.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError("no callgrind summary")


def count(concurrency: int, runs: int, limits: str, app_name: str = "service") -> None:
    per_send = []
    with Servers() as servers:
        for _ in range(runs):
            if limits.startswith("redis"):
                import redis

                redis.Redis.from_url(limits).flushdb()
            short = instructions(SHORT, concurrency, servers, limits, app_name)
            long = instructions(LONG, concurrency, servers, limits, app_name)
            per_send.append(round((long - short) / (LONG - SHORT)))
            print(f"concurrency {concurrency}: {per_send[-1]:,} instructions/send", flush=True)
    if runs > 1:
        print(f"median {statistics.median(per_send):,.0f}")


def layers(concurrency: int, sends: int, keep: str | None, gil: bool, limits: str) -> None:
    with Servers() as servers, tempfile.TemporaryDirectory() as tmp:
        raw = Path(keep or Path(tmp) / "spy.txt")
        args = [sends, concurrency, _database(tmp), servers.fake_url, servers.media_url, limits]
        started = time.perf_counter()
        spy = subprocess.run(
            [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "--rate",
                "500",
                *(["--gil"] if gil else []),
                "--format",
                "raw",
                "--output",
                str(raw),
                "--",
                sys.executable,
                __file__,
                "--drive",
                json.dumps(args),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        if f"SENT {sends}" not in spy.stderr:
            raise RuntimeError(f"the sends failed: {spy.stderr[-2000:]}")
        print(f"{sends} sends in {time.perf_counter() - started:.1f} s (with start-up)")
        summarise(raw)


def summarise(raw: Path) -> None:
    import profile as layer_table  # benchmarks/profile.py: the layers and their markers

    stacks = []
    for line in raw.read_text().splitlines():
        frames, _, n = line.rpartition(" ")
        stacks.append((frames.split(";"), int(n)))
    # Only the samples of the sends: start-up and shutdown are left out.
    sending = [(f, n) for f, n in stacks if not _start_or_stop(f) and not layer_table.idle(f)]
    total = sum(n for _, n in sending) or 1
    by_layer: collections.Counter[str] = collections.Counter()
    for frames, n in sending:
        by_layer[layer_table._layer(frames)] += n
    print(f"{total} samples during the sends")
    for name, n in by_layer.most_common():
        print(f"| {name} | {n / total:.1%} |")
    leaf: collections.Counter[str] = collections.Counter()
    for frames, n in sending:
        leaf[layer_table._short(frames[-1])] += n
    for name, n in leaf.most_common(30):
        print(f"  {n / total:6.1%}  {name}")


def _start_or_stop(frames: list[str]) -> bool:
    """Imports, building the app, the lifespan's start and stop: not the sends."""
    return any(m in x for x in frames for m in ("_find_and_load", "create_app", "_lifespan ("))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--drive":
        drive(*json.loads(sys.argv[2]))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("count", "layers"))
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--limits",
        default="memory://",
        help="RATE_LIMIT_STORAGE_URL (a Redis database is flushed first: it must be a spare one)",
    )
    parser.add_argument("--sends", type=int, default=4000)
    parser.add_argument("--raw", help="layers: keep py-spy's stacks in this file")
    parser.add_argument(
        "--gil",
        action="store_true",
        help="layers: only samples of the thread holding the GIL (Python's own work; a "
        "driver's C code that releases the GIL, such as sqlite3's, is left out)",
    )
    parser.add_argument(
        "--app",
        choices=("service", "floor"),
        default="service",
        help="count: the service, or floor.py's `plivo` app (no work of the service's own)",
    )
    options = parser.parse_args()
    if options.what == "count":
        count(options.concurrency, options.runs, options.limits, options.app)
    else:
        layers(options.concurrency, options.sends, options.raw, options.gil, options.limits)
