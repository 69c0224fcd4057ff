"""CPU per webhook delivery, the delivery worker alone.

    python benchmarks/delivery_cost.py [--events 4000] [--rounds 3]

Each round queues `--events` pending `message.status` deliveries for one endpoint in a
fresh SQLite store (nothing else runs: no sends, no HTTP server), then starts the
delivery worker (`app.webhooks.delivery`, the service's own settings: one aiohttp
session, 10 s per attempt, Standard Webhooks signatures, one log line per delivery to
/dev/null) on CPU 0 against `webhook_receiver.py` on CPU 1, and reports the CPU of this process
(`time.process_time()`: the worker, its claims and its outcome writes) per delivered event
and the rate, until none is pending. `floor.py` gives what a bare aiohttp POST costs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from app.config import Settings  # noqa: E402
from app.logging import configure_logging  # noqa: E402
from app.store import webhooks as store  # noqa: E402
from app.store.db import Database, FunctionOp  # noqa: E402
from app.webhooks.delivery import WebhookDelivery  # noqa: E402
from app.webhooks.events import targets_for  # noqa: E402

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def one_round(events: int, hook_url: str, folder: Path) -> tuple[float, float]:
    """(CPU µs per delivery, deliveries per second)."""
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=f"sqlite+aiosqlite:///{folder}/deliveries-{time.monotonic_ns()}.db",
        api_keys="bench:0123456789abcdef0123",
        webhooks=f"bench={hook_url}",
        webhook_secret=SECRET,
    )
    db = Database(settings.database_url)
    await db.start()
    targets = targets_for(settings)
    now = int(time.time() * 1000)
    queued = [
        store.Event(
            type=store.MESSAGE_STATUS,
            at=now,
            data={"id": f"m{i}", "status": "queued", "to": "+1415***0000"},
            caller="bench",
        )
        for i in range(events)
    ]
    for start in range(0, events, 500):
        chunk = queued[start : start + 500]
        await db.write(FunctionOp(lambda c, chunk=chunk: store.add_events(c, targets, chunk)))

    async def pending() -> int:
        async with db.read() as conn:
            return (await store.backlog(conn))[0]

    worker = WebhookDelivery(db, settings)
    cpu, wall = time.process_time(), time.perf_counter()
    worker.start()
    while await pending():  # noqa: ASYNC110 - polls the store
        await asyncio.sleep(0.05)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await worker.stop(5)
    await db.close()
    return cpu / events * 1e6, events / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.sched_setaffinity(0, {0})  # the worker on CPU 0, the receiver on CPU 1
    port = _free_port()
    receiver = subprocess.Popen(
        [
            "taskset",
            "-c",
            "1",
            sys.executable,
            str(HERE / "webhook_receiver.py"),
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
    )
    sys.path.insert(0, str(HERE))
    from run import wait_http

    try:
        wait_http(f"http://127.0.0.1:{port}/stats")
        configure_logging(level="info", fmt="json")
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the log lines are written, then dropped
        results = []
        with tempfile.TemporaryDirectory() as folder:
            for _ in range(args.rounds):
                results.append(
                    asyncio.run(
                        one_round(args.events, f"http://127.0.0.1:{port}/hook", Path(folder))
                    )
                )
        sys.stdout = sys.__stdout__
        for cpu, rate in results:
            print(f"{args.events} deliveries: {cpu:.0f} µs of CPU each, {rate:.0f}/s")
    finally:
        receiver.terminate()
        receiver.wait(10)


if __name__ == "__main__":
    main()
