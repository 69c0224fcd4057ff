"""The benchmark's media host: every path is a small PNG, so media preflight passes.

    python benchmarks/media_server.py [--port 0]      (prints `PORT <n>` once it listens)

The service checks every media URL before a send (HEAD: status, `Content-Type`,
`Content-Length`). The benchmark's sends name a picture on this server, on loopback, and
the service allows the host with `MEDIA_ALLOW_HOSTS=127.0.0.1:<port>` — the documented way
to let preflight reach an internal media host (the private-address rule stays on for
every other host). Any path answers, so a load that gives every send a new URL
(`/m/<n>.png`) makes every preflight a cache miss. `GET /_stats` counts the requests
(`head`, `get`), which shows how many checks reached the host.

`serving()` starts it as a child process on a free port (pinned to a CPU like the fake
Plivo) and stops it by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# A 1x1 transparent PNG: a real picture, so the type and the length are true.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


class MediaServer:
    """A running media server: its port, the service's settings that allow it, its counts."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int) -> None:
        self.proc = proc
        self.port = port
        self.base = f"http://127.0.0.1:{port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        """The one picture every warm-cache send names."""
        return f"{self.base}/a.png"

    @property
    def env(self) -> dict[str, str]:
        """Preflight on, this host allowed as an internal media host (a production setting)."""
        return {"MEDIA_PREFLIGHT": "true", "MEDIA_ALLOW_HOSTS": f"127.0.0.1:{self.port}"}

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"{self.base}/_stats", timeout=5) as response:
            counts: dict[str, int] = json.load(response)
        return counts


@contextmanager
def serving(cpus: str = "1") -> Iterator[MediaServer]:
    """Start the media server on a free loopback port; stop it (by PID) on the way out."""
    command = [sys.executable, str(Path(__file__).resolve()), "--port", "0"]
    if cpus and os.cpu_count() and (os.cpu_count() or 1) >= 2:
        command = ["taskset", "-c", cpus, *command]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()  # blocks until it listens (or exits)
        if not line.startswith("PORT "):
            raise RuntimeError("the media server did not start")
        yield MediaServer(proc, int(line.removeprefix("PORT ")))
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


async def serve(port: int) -> None:
    from aiohttp import web

    counts = {"head": 0, "get": 0}

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(counts)

    async def picture(request: web.Request) -> web.Response:
        counts["head" if request.method == "HEAD" else "get"] += 1
        # aiohttp answers HEAD with the headers of this response and no body.
        return web.Response(body=PNG, content_type="image/png")

    app = web.Application()
    app.router.add_get("/_stats", stats)
    app.router.add_get("/{path:.*}", picture)  # HEAD too (aiohttp adds it to GET routes)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    await web.SockSite(runner, sock, backlog=1024).start()
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(serve(args.port))
    except ImportError:
        asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
