"""Per-feature cost in instructions per send, counted by valgrind (callgrind).

    python benchmarks/feature_cost.py [--fake-url http://127.0.0.1:8765/v1]
                                      [--media-url http://127.0.0.1:PORT/a.png]

Timing one feature is hopeless on a shared, throttled VM (identical runs differ by 30 %);
instruction counts vary far less, though not to zero (under valgrind's slowdown the
time-driven work — limit sweeps, the reconciler's polls, the writer thread's batching —
runs a varying number of times: rows under ~5 % of a send moved by up to 7 points between
two runs, the record and "everything off" rows by 2-4). Each variant sends SHORT and then
LONG requests, one after the other, through the app's ASGI callable (no HTTP server) to
a fake Plivo, and the difference divided by LONG - SHORT is its instructions per send —
startup cancels out. Each row switches one feature off (the same switches as variant.py).
Sequential sends commit one record per transaction, so `record` here is the dearest
case; under load group commit shares the commit (see record_cost.py). Every send names one
picture on the local media server (media_server.py; started here without --media-url),
allowed with MEDIA_ALLOW_HOSTS: preflight checks it once, then every send is a cache hit.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
SHORT, LONG = 20, 80
VARIANTS = [
    # (label, settings changes, code switches)
    ("all features on", {}, ""),
    ("auth off", {"api_keys": ""}, ""),
    ("per-IP limit off", {}, "ip_limit"),
    ("per-destination limit off", {}, "destination_limit"),
    ("daily quota off", {"daily_quota_per_key": 0}, ""),
    ("request log line off", {"log_level": "warning"}, ""),
    ("metrics off", {}, "metrics"),
    ("record off", {}, "record"),
    ("media preflight off", {"media_preflight": False}, ""),
    ("pacer off", {"send_rate": "0"}, ""),
    ("opt-out check off", {}, "optout_check"),
    (
        "everything above off",
        {
            "api_keys": "",
            "daily_quota_per_key": 0,
            "log_level": "warning",
            "media_preflight": False,
            "send_rate": "0",
        },
        "ip_limit,destination_limit,metrics,record,optout_check",
    ),
]


def drive(
    count: int, settings_json: str, off: str, database: str, fake_url: str, media_url: str
) -> None:
    """Inside valgrind: build the app with the variant applied, then send `count` times."""
    sys.path.insert(0, str(HERE.parent))
    sys.path.insert(0, str(HERE))
    from variant import switch_off

    switch_off({f for f in off.split(",") if f})
    from asgi_lifespan import LifespanManager

    from app.config import Settings
    from app.main import create_app

    values = {
        "plivo_auth_id": "MAFAKEAUTHID00000000",
        "plivo_auth_token": "fake-auth-token",
        "plivo_sender_number": "+14155550000",
        "plivo_api_url": fake_url,
        "log_format": "json",
        "log_level": "info",
        "database_url": database,
        "api_keys": "b:bench-0123456789abcdef",
        "public_base_url": "https://mms.example.com",
        "rate_limit": "100/minute",
        "rate_limit_per_destination": "100000/hour",
        "daily_quota_per_key": 1_000_000_000,
        "send_rate": "10000/second",  # the pacer on, at a rate that never binds
        # On, as in production, with the local media host allowed the documented way.
        "media_preflight": True,
        "media_allow_hosts": urlsplit(media_url).netloc,
    }
    values.update(json.loads(settings_json))
    app = create_app(Settings(_env_file=None, **values))

    async def one(app_: Any, i: int) -> int:
        body = (
            f'{{"to": "+1415555{100 + i:04d}", "media_urls": ["{media_url}"], "text": "hello"}}'
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"authorization", b"Bearer bench-0123456789abcdef"),
            (b"content-length", str(len(body)).encode()),
        ]
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
            "headers": headers,
            "client": (f"10.0.{i % 250}.1", 1234),
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
            for i in range(count):
                status = await one(manager.app, i)
                assert status == 200, status

    asyncio.run(run())


def instructions(count: int, settings: dict, off: str, fake_url: str, media_url: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        database = f"sqlite+aiosqlite:///{tmp}/cost.db"
        from run import seed_optouts  # the same 100,000-number list as scenarios 1 and 2

        seed_optouts(database)
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                __file__,
                "--drive",
                str(count),
                json.dumps(settings),
                off,
                database,
                fake_url,
                media_url,
            ],
            check=True,
            capture_output=True,
            timeout=3600,
        )
        for line in out.read_text(errors="replace").splitlines():
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    raise RuntimeError("no callgrind summary")


def measure(fake_url: str, media_url: str) -> list[dict]:
    jobs = [(label, n, settings, off) for label, settings, off in VARIANTS for n in (SHORT, LONG)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # one valgrind per core
        counts = list(pool.map(lambda j: instructions(j[1], j[2], j[3], fake_url, media_url), jobs))
    rows = []
    for i, (label, _, _) in enumerate(VARIANTS):
        per_send = (counts[2 * i + 1] - counts[2 * i]) / (LONG - SHORT)
        rows.append({"variant": label, "instructions_per_send": round(per_send)})
    base = rows[0]["instructions_per_send"]
    for row in rows:
        row["saves_share"] = round((base - row["instructions_per_send"]) / base, 3)
    return rows


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--drive":
        drive(int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], *sys.argv[6:8])
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fake-url", default="http://127.0.0.1:8765/v1")
    parser.add_argument("--media-url", help="default: a media server started here")
    args = parser.parse_args()
    if args.media_url:
        rows = measure(args.fake_url, args.media_url)
    else:
        import media_server

        with media_server.serving() as media:
            rows = measure(args.fake_url, media.url)
    for row in rows:
        print(
            f"{row['variant']:28s} {row['instructions_per_send']:>12,} instructions/send "
            f"(saves {row['saves_share']:.1%})"
        )
