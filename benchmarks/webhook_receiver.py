"""A webhook endpoint for the benchmark: answers 200 at once and keeps, per event, the lag
from the event (the body's `timestamp`: when the service received the callback) to its
arrival here.

    python benchmarks/webhook_receiver.py --port 8790

`GET /stats` -> {"count", "p50_ms", "p99_ms", "last_at"}; `POST /reset` empties it.
Signatures are not checked here (the tests do that with the standardwebhooks library): the
benchmark measures the service, not the receiver.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import datetime

import orjson
from aiohttp import web

lags: list[float] = []
last_at: list[float] = [0.0]


async def hook(request: web.Request) -> web.Response:
    body = orjson.loads(await request.read())
    now = time.time()
    at = datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00")).timestamp()
    lags.append((now - at) * 1000)
    last_at[0] = now
    return web.Response(text="ok")


def _quantile(values: list[float], q: float) -> float | None:
    if len(values) < 2:
        return round(values[0], 1) if values else None
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 1)


async def stats(request: web.Request) -> web.Response:
    data = {
        "count": len(lags),
        "p50_ms": _quantile(lags, 50),
        "p99_ms": _quantile(lags, 99),
        "last_at": last_at[0],  # epoch seconds of the latest arrival
    }
    return web.json_response(data)


async def reset(request: web.Request) -> web.Response:
    lags.clear()
    return web.Response(text="ok")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8790)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
