"""CPU cost of webhooks per send: the event insert alone, and the insert plus delivery.

    python benchmarks/webhook_cost.py [--sends 2000] [--concurrency 50] [--rounds 3]

Sends go through the app's ASGI callable in this process (no HTTP server) to a fake Plivo
and, for the delivery variant, to a receiver answering 200 — both in processes of their own,
so `time.process_time()` counts this process only: the service. Variants, interleaved
round by round (median reported):

- off:        WEBHOOKS empty (no event is written)
- insert:     one endpoint for the sending key, its worker stopped: each send's record also
              inserts its `message.status` event, in the same transaction, and nothing more
- delivered:  the same, the worker running: every event is also signed and POSTed

A whole send varies by more than the insert costs on a shared machine, so the insert is
also measured alone: the send's record through the group-commit writer (as
record_cost.py), with and without its event, the difference being the insert's CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from asgi_lifespan import LifespanManager  # noqa: E402

from app.config import Settings  # noqa: E402
from app.main import create_app  # noqa: E402

KEY = "bench-0123456789abcdef"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
LOG_LEVEL = "warning"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def settings(db: str, plivo: str, webhooks: str) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=f"sqlite+aiosqlite:///{db}",
        plivo_auth_id="MAFAKEAUTHID00000000",
        plivo_auth_token="fake-auth-token-0123456789",
        plivo_sender_number="+14155550000",
        plivo_api_url=plivo,
        api_keys=f"bench:{KEY}",
        rate_limit="1000000/minute",
        rate_limit_per_destination="1000000/hour",
        send_rate="0",
        media_preflight=False,
        log_level=LOG_LEVEL,
        webhooks=webhooks,
        webhook_secret=SECRET if webhooks else None,
    )


async def run(variant: str, args: argparse.Namespace, plivo: str, hook: str, tmp: Path) -> float:
    webhooks = "" if variant == "off" else f"bench={hook}"
    app = create_app(settings(str(tmp / f"{variant}-{time.monotonic_ns()}.db"), plivo, webhooks))
    state: dict[str, Any] = {}

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            state["state"] = scope["state"]
        await app(scope, receive, send)

    async with LifespanManager(wrapped, startup_timeout=30) as manager:
        services = state["state"]["services"]
        if variant == "insert":
            await services.webhooks.stop()  # events are written; none is delivered
        transport = httpx.ASGITransport(app=manager.app, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            numbers = iter(range(args.sends))

            async def caller() -> None:
                for i in numbers:
                    body = {
                        "to": f"+1415555{i % 10000:04d}",
                        "media_urls": ["https://media.example.com/a.png"],
                        "text": "hello",
                    }
                    response = await client.post(
                        "/api/mms/send", json=body, headers={"X-API-Key": KEY}
                    )
                    assert response.status_code == 200, response.text

            for _ in range(2):  # warm-up
                await caller_once(client)
            cpu = time.process_time()
            await asyncio.gather(*(caller() for _ in range(args.concurrency)))
            if variant == "delivered":  # until every event is delivered: its CPU counts
                while await pending(services) > 0:  # noqa: ASYNC110 - polls the store
                    await asyncio.sleep(0.1)
            cpu = time.process_time() - cpu
    return cpu / args.sends * 1e6


async def caller_once(client: httpx.AsyncClient) -> None:
    body = {"to": "+14155559999", "media_urls": ["https://m.example.com/a.png"], "text": "w"}
    await client.post("/api/mms/send", json=body, headers={"X-API-Key": KEY})


async def pending(services: Any) -> int:
    from app.store.webhooks import backlog

    async with services.db.read() as conn:
        count, _ = await backlog(conn)
    return count


async def record_cost(args: argparse.Namespace, tmp: Path, with_event: bool) -> float:
    """CPU per send record through the group-commit writer (as record_cost.py), with or
    without its event: the insert's own cost, without the noise of a whole send."""
    from record_cost import _row as row  # benchmarks/: the same rows as record_cost.py

    from app.store.db import Database
    from app.store.repository import RecordMessage
    from app.webhooks.events import targets_for

    db = Database(f"sqlite+aiosqlite:///{tmp}/record-{time.monotonic_ns()}.db")
    await db.start()
    hooks = settings(str(tmp / "unused.db"), "http://127.0.0.1:9/v1", "bench=http://x.invalid/")
    targets = targets_for(hooks) if with_event else db.webhooks
    queue = iter(range(args.records))

    async def writer() -> None:
        for i in queue:
            await db.write(RecordMessage(row(i), targets=targets))

    await asyncio.gather(*(writer() for _ in range(args.concurrency)))  # warm-up
    queue = iter(range(args.records))
    cpu = time.process_time()
    await asyncio.gather(*(writer() for _ in range(args.concurrency)))
    cpu = time.process_time() - cpu
    await db.close()
    return cpu / args.records * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sends", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--records", type=int, default=5000)
    args = parser.parse_args()
    plivo_port, hook_port = free_port(), free_port()
    fake = subprocess.Popen(
        [sys.executable, "-m", "tests.fakeplivo", "--port", str(plivo_port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    receiver = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "webhook_receiver.py"),
            "--port",
            str(hook_port),
        ],
        stdout=subprocess.DEVNULL,
    )
    results: dict[str, list[float]] = {"off": [], "insert": [], "delivered": []}
    records: dict[bool, list[float]] = {False: [], True: []}
    try:
        wait_port(plivo_port)
        wait_port(hook_port)
        plivo = f"http://127.0.0.1:{plivo_port}/v1"
        hook = f"http://127.0.0.1:{hook_port}/hook"
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.rounds):
                for variant in results:
                    value = asyncio.run(run(variant, args, plivo, hook, Path(tmp)))
                    results[variant].append(value)
                    print(f"  {variant:9s} {value:7.0f} µs CPU per send", flush=True)
                for with_event in records:
                    value = asyncio.run(record_cost(args, Path(tmp), with_event))
                    records[with_event].append(value)
                    label = "record + event" if with_event else "record"
                    print(f"  {label:14s} {value:7.1f} µs CPU per record", flush=True)
    finally:
        fake.terminate()
        receiver.terminate()
    off = statistics.median(results["off"])
    print(f"\n{args.sends} sends, {args.concurrency} at once, median of {args.rounds} rounds:")
    for variant, values in results.items():
        value = statistics.median(values)
        extra = "" if variant == "off" else f"  ({(value - off) / off * 100:+.1f} % of a send)"
        print(f"  {variant:9s} {value:7.0f} µs CPU per send{extra}")
    plain, hooked = (statistics.median(records[k]) for k in (False, True))
    print(
        f"\n{args.records} send records, {args.concurrency} at once, median of {args.rounds}:"
        f"\n  record          {plain:7.1f} µs CPU\n  record + event  {hooked:7.1f} µs CPU"
        f"\n  the event insert: {hooked - plain:+.1f} µs per send = "
        f"{(hooked - plain) / off * 100:.1f} % of a send's {off:.0f} µs"
    )


if __name__ == "__main__":
    main()
