"""Instructions (callgrind) of one layer of a send, alone: what one send's limits, its log
line or its record cost, counted the same way before and after a change.

    python benchmarks/layer_cost.py limits [--limits redis://127.0.0.1:6379/15]
    python benchmarks/layer_cost.py logline
    python benchmarks/layer_cost.py record [--concurrency 50]

Each runs SHORT then LONG operations in one process under valgrind and divides the
difference by LONG - SHORT (start-up cancels out), as send_cost.py does for whole sends:

- limits: a send's three checks (`check_client`, `test_send`, `count_send`), each send
  from another client address to one of 1,000 destinations, with the benchmark's limits;
- logline: the middleware's request line of a send, JSON logs to /dev/null;
- record: `RecordMessage` of a sent message through the store's writer, `--concurrency`
  at a time (50: scenario 1's connections, committed together), SQLite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SHORT, LONG = 1000, 4000


async def limits(count: int, url: str) -> None:
    from app.ratelimit import Limits, LimitStore

    store = LimitStore(url)
    checks = Limits(
        store, per_ip="100/minute", per_destination="100000/hour", daily_quota=1_000_000_000
    )
    for i in range(count):
        destination = f"+1415555{i % 1000:04d}"
        await checks.check_client(f"10.{i // 62500 % 250}.{i // 250 % 250}.{i % 250 + 1}")
        await checks.test_send(destination=destination, caller="bench")
        await checks.count_send(destination=destination, caller="bench")


async def logline(count: int, _: str) -> None:
    import structlog

    from app.logging import configure_logging, get_logger

    try:
        from app.logging import log_request
    except ImportError:  # before the line had its own renderer: the processor chain

        def log_request(fields: dict[str, Any]) -> None:
            get_logger("app.access").info("request", **fields)

    configure_logging(level="info", fmt="json", secrets=["bench-0123456789abcdef"])
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115, ASYNC230 - written, then dropped
    for i in range(count):
        tokens = structlog.contextvars.bind_contextvars(request_id=f"{i:032x}")
        log_request(
            {
                "method": "POST",
                "route": "/api/mms/send",
                "status": 200,
                "duration_ms": 1.23,
                "caller": "bench",
                "to": f"+1415555{i % 1000:04d}",
                "message_uuid": "8777463d-0b17-437b-9692-612345678901",
                "code": None,
                "pid": 4711,
            }
        )
        structlog.contextvars.reset_contextvars(**tokens)


async def record(count: int, concurrency: str) -> None:
    import record_cost

    from app.store.db import Database
    from app.store.repository import RecordMessage

    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite+aiosqlite:///{tmp}/record.db")
        await db.start()
        rows = iter(range(count))

        async def worker() -> None:
            for i in rows:
                await db.write(RecordMessage(record_cost._row(i)))

        await asyncio.gather(*(worker() for _ in range(int(concurrency))))
        await db.close()


LAYERS: dict[str, Any] = {"limits": limits, "logline": logline, "record": record}


def instructions(layer: str, count: int, option: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                __file__,
                "--run",
                json.dumps([layer, count, option]),
            ],
            check=True,
            capture_output=True,
            timeout=7200,
        )
        for line in out.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError("no callgrind summary")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    sys.path.insert(0, str(HERE))
    if len(sys.argv) > 1 and sys.argv[1] == "--run":
        layer, count, option = json.loads(sys.argv[2])
        asyncio.run(LAYERS[layer](count, option))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("layer", choices=sorted(LAYERS))
    parser.add_argument("--limits", default="memory://", help="limits: the storage URL")
    parser.add_argument("--concurrency", default="50", help="record: writes at once")
    options = parser.parse_args()
    option = {"limits": options.limits, "record": options.concurrency}.get(options.layer, "")
    if option.startswith("redis"):
        import redis

        redis.Redis.from_url(option).flushdb()
    short = instructions(options.layer, SHORT, option)
    long = instructions(options.layer, LONG, option)
    print(f"{options.layer} {option}: {(long - short) / (LONG - SHORT):,.0f} instructions per send")
