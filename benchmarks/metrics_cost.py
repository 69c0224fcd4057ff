"""CPU cost of the Prometheus metrics per send.

    python benchmarks/metrics_cost.py [--iterations 200000] [--sends 3000] [--rounds 4]

1. Hooks: the metric updates one successful send makes (request counter and histogram,
   send counter, one Plivo attempt's counter and histogram, the in-flight gauge twice,
   one group commit's two histograms, media preflight's cache lookup, result and
   duration), timed in a loop — in one process (in-memory values)
   and in multiprocess mode (PROMETHEUS_MULTIPROC_DIR: values in mmap'ed files).
2. Whole sends: process CPU per send of the real app in process (httpx's ASGI transport,
   SQLite store, a Plivo client that answers at once, media preflight on against a local
   media server: a cache hit per send), with the metrics as built and with every hook
   replaced by a no-op, in interleaved rounds. The difference is small next to
   a send's cost, so read it with its noise (the spread between rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def hooks_cost(iterations: int) -> float:
    """Microseconds of metric updates per send."""
    from app.metrics import Metrics, multiprocess_dir

    metrics = Metrics(multiprocess_dir())
    scope: dict[str, Any] = {"method": "POST", "path": "/api/mms/send", "state": {}}
    observe, attempt = metrics.observe_request, metrics.plivo_attempt
    in_flight, batch = metrics.set_plivo_in_flight, metrics.store_batch
    lookup, verdict, took = (
        metrics.preflight_cache_lookup,
        metrics.preflight_result,
        metrics.preflight_took,
    )
    started = time.process_time()
    for _ in range(iterations):
        lookup(True)  # media preflight: one picture, cached
        took(0.00002)
        verdict("ok")
        in_flight(1)
        attempt("accepted", 0.0012)
        in_flight(0)
        batch(1, 0.0008)  # worst case: a batch of one per send (batches grow with load)
        observe(scope, "/api/mms/send", 200, 0.0031)
    return (time.process_time() - started) / iterations * 1e6


def _hooks_in_subprocess(iterations: int, multiproc: bool) -> float:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    with tempfile.TemporaryDirectory() as directory:
        if multiproc:
            env["PROMETHEUS_MULTIPROC_DIR"] = directory  # before prometheus-client's import
        result = subprocess.run(
            [sys.executable, __file__, "--hooks-only", "--iterations", str(iterations)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
    return float(result.stdout.strip())


async def _sends_cpu(sends: int, with_metrics: bool, media_url: str) -> float:
    """Process CPU microseconds per send through the whole app."""
    import httpx
    from asgi_lifespan import LifespanManager

    from app import main
    from app.config import Settings
    from app.metrics import Metrics
    from app.plivo.client import Accepted, PlivoClient

    class Instant(PlivoClient):
        async def send_mms(self, mms: Any, *, timeout: float) -> Accepted:
            return Accepted(
                message="message(s) queued", message_uuids=[os.urandom(16).hex()], api_id="bench"
            )

        async def get_message(self, message_uuid: str, *, timeout: float) -> None:
            return None

        async def list_messages(self, **_: Any) -> list[Any]:
            return []

        async def aclose(self) -> None:
            pass

    saved = {name: getattr(Metrics, name) for name in dir(Metrics) if not name.startswith("_")}
    if not with_metrics:
        for name in (
            "observe_request",
            "plivo_attempt",
            "set_plivo_in_flight",
            "store_batch",
            "circuit_changed",
            "set_reconcile_backlog",
            "preflight_result",
            "preflight_cache_lookup",
            "preflight_took",
        ):
            setattr(Metrics, name, lambda self, *args: None)
    main._plivo_client = lambda settings: Instant()  # type: ignore[assignment]
    try:
        with tempfile.TemporaryDirectory() as directory:
            settings = Settings(  # type: ignore[call-arg]
                _env_file=None,
                database_url=f"sqlite+aiosqlite:///{directory}/bench.db",
                plivo_auth_id="MABENCH",
                plivo_auth_token="bench-token",
                plivo_sender_number="+14155550000",
                log_level="warning",
                rate_limit="1000000/minute",
                rate_limit_per_destination="1000000/hour",
                send_rate="10000/second",  # the pacer on, at a rate that never binds
                media_preflight=True,  # on, the local media host allowed the documented way
                media_allow_hosts=urlsplit(media_url).netloc,
            )
            app = main.create_app(settings)
            body = {"to": "+14155550100", "media_urls": [media_url], "text": "hi"}
            async with (
                LifespanManager(app) as manager,
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=manager.app), base_url="http://bench"
                ) as client,
            ):

                async def worker(n: int) -> None:
                    for _ in range(n):
                        response = await client.post("/api/mms/send", json=body)
                        assert response.status_code == 200, response.text

                await worker(200)  # warm-up
                started = time.process_time()
                await asyncio.gather(*(worker(sends // 50) for _ in range(50)))
                return (time.process_time() - started) / (sends // 50 * 50) * 1e6
    finally:
        for name, value in saved.items():
            setattr(Metrics, name, value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=200_000)
    parser.add_argument("--sends", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--hooks-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hooks_only:
        print(hooks_cost(args.iterations))
        return
    one = _hooks_in_subprocess(args.iterations, multiproc=False)
    many = _hooks_in_subprocess(args.iterations, multiproc=True)
    print(f"metric updates per send: {one:.1f} µs (one process), {many:.1f} µs (multiprocess)")
    results: dict[bool, list[float]] = {True: [], False: []}
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import media_server

    with media_server.serving() as media:
        for _ in range(args.rounds):
            for with_metrics in (False, True):
                results[with_metrics].append(
                    asyncio.run(_sends_cpu(args.sends, with_metrics, media.url))
                )
    for with_metrics in (False, True):
        values = results[with_metrics]
        print(
            f"whole send, metrics {'on ' if with_metrics else 'off'}: "
            f"median {statistics.median(values):.0f} µs CPU "
            f"(rounds: {', '.join(f'{v:.0f}' for v in values)})"
        )


if __name__ == "__main__":
    main()
