"""The floor of this stack: what a send costs with none of the service's own work.

    python benchmarks/floor.py [--rounds 3] [--duration 10]

Runs scenario 1 (fake Plivo at 0 ms, 50 connections, the peer's `compare.sh`, both
services on CPU 0) against two minimal ASGI apps on the service's own server settings
(uvicorn, uvloop, its bounded httptools protocol and keep-alive timeout, one process),
each side by side with the peer:

- `plivo`: parse the JSON body, one aiohttp POST to the fake Plivo (basic auth, JSON), as
  the service's client does, answer 200 with Plivo's answer (a Plivo error is a 500, so
  wrk counts it). A send with no records, checks, logs or metrics.
- `plivo+webhook`: the same, plus one bare aiohttp POST of a small JSON event to a webhook
  receiver on CPU 1, inline: the third HTTP exchange a send has when one endpoint takes
  its key's events, without the delivery's signature, claim and outcome write.

CPU 1 carries the fake Plivo, wrk and the receiver: at these rates the app's req/s is a
lower bound; its CPU per request is the figure to read.

No row is the service: the gap between these rows and the service's scenario 1 is the
service's own work, and the gap between these rows and the peer is the floor of the
libraries themselves on this machine.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # the service's HTTP protocol class

VARIANTS = ("plivo", "plivo+webhook")
PORT = 3102


# The app ------------------------------------------------------------------------------------
class FloorApp:
    def __init__(self, variant: str) -> None:
        self.variant = variant
        self.plivo_url = (
            f"{os.environ.get('PLIVO_API_URL', 'http://127.0.0.1:8765/v1')}/Account/"
            f"{os.environ.get('PLIVO_AUTH_ID', 'MAFAKE')}/Message/"
        )
        token = f"{os.environ.get('PLIVO_AUTH_ID', '')}:{os.environ.get('PLIVO_AUTH_TOKEN', '')}"
        self.auth = "Basic " + base64.b64encode(token.encode()).decode()
        self.hook_url = os.environ.get("FLOOR_HOOK_URL", "http://127.0.0.1:8791/hook")
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.session = aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(limit=100), trust_env=False
                    )
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if self.session is not None:
                        await self.session.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] == "/health":
            await self._answer(send, {"status": "ok"})
            return
        request = orjson.loads(body) if body else {}
        answer: dict[str, Any] = {}
        if self.session is not None:
            payload = {
                "src": os.environ.get("PLIVO_SENDER_NUMBER", "14155550000"),
                "dst": str(request.get("to", "")).lstrip("+"),
                "text": request.get("text", ""),
                "type": "mms",
                "media_urls": request.get("media_urls") or [request.get("mediaUrl", "")],
            }
            async with self.session.post(
                self.plivo_url,
                data=orjson.dumps(payload),
                headers={"Authorization": self.auth, "Content-Type": "application/json"},
            ) as response:
                response.raise_for_status()
                answer = orjson.loads(await response.read())
        if self.variant == "plivo+webhook" and self.session is not None:
            event = {"type": "message.status", "timestamp": _now_iso(), "data": answer}
            async with self.session.post(
                self.hook_url,
                data=orjson.dumps(event),
                headers={"Content-Type": "application/json"},
            ) as response:
                await response.read()
        await self._answer(send, answer)

    @staticmethod
    async def _answer(send: Any, answer: dict[str, Any]) -> None:
        body = orjson.dumps(answer)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def serve() -> None:
    import uvicorn

    from app.http_protocol import KEEP_ALIVE_SECONDS

    uvicorn.run(
        FloorApp(os.environ.get("FLOOR_VARIANT", "plivo")),
        host="127.0.0.1",
        port=int(os.environ.get("PORT", PORT)),
        loop="uvloop",
        http="app.http_protocol:BoundedHttpToolsProtocol",  # as app/__main__.py
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        access_log=False,
        log_level="warning",
    )


# The run ------------------------------------------------------------------------------------
def main() -> None:
    import run

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    workdir = Path(tempfile.gettempdir()) / "mms-bench"
    workdir.mkdir(exist_ok=True)
    peer = run.prepare_peer(workdir)
    results = []
    with run.webhook_receiver():
        for variant in args.variants.split(","):
            command = [
                str(peer / "compare.sh"),
                "--rounds", str(args.rounds),
                "--duration", str(args.duration),
                "--label-b", f"floor-{variant}",
                "--b-health", f"http://127.0.0.1:{PORT}/health",
                f"FLOOR_VARIANT={variant} exec {sys.executable} {Path(__file__).resolve()} --serve",
                f"http://127.0.0.1:{PORT}/api/mms/send",
            ]  # fmt: skip
            summary: dict[str, Any] = {}
            with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as proc:
                assert proc.stdout is not None
                for line in proc.stdout:
                    if line.startswith("SUMMARY_JSON "):
                        summary = json.loads(line.removeprefix("SUMMARY_JSON "))
                    elif line.startswith(("WARNING", "ratio", "note")):
                        print("   ", line.rstrip(), flush=True)
            if proc.returncode != 0 or not summary:
                raise SystemExit(f"compare.sh failed for {variant} (exit {proc.returncode})")
            results.append((variant, summary))
            print(f"{variant}: {json.dumps(summary)}", flush=True)
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} on this machine ({os.cpu_count()} cores), "
        f"{args.rounds} interleaved rounds of {args.duration} s per side "
        "(`python benchmarks/floor.py`).",
        "",
        "| app | peer req/s | app req/s | ratio | peer CPU/request | app CPU/request "
        "| app's non-2xx, socket errors |",
        "|---|---|---|---|---|---|---|",
        *(f"| {variant} | {_row(summary)} |" for variant, summary in results),
    ]
    text = "\n".join(lines) + "\n"
    (HERE / "results" / "floor.md").write_text(text)
    print(text)


def _row(summary: dict[str, Any]) -> str:
    a, b, ratio = summary["A"], summary["B"], summary["ratio_B_over_A"]
    return (
        f"{a['median_rps']} | {b['median_rps']} | {ratio['rps']}× | "
        f"{a['median_svc_cpu_ms_per_req']} ms | {b['median_svc_cpu_ms_per_req']} ms | "
        f"{b['non2xx_total']}, {b['errors_total']}"
    )


if __name__ == "__main__":
    if "--serve" in sys.argv:
        serve()
    else:
        main()
