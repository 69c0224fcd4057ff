"""Start the real service (`python -m app`) as a subprocess for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from app.config import Settings
from tests.fakeplivo import AUTH_ID, AUTH_TOKEN
from tests.loopback import http_get

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env(plivo_url: str, **overrides: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    env.update(
        PLIVO_AUTH_ID=AUTH_ID,
        PLIVO_AUTH_TOKEN=AUTH_TOKEN,
        PLIVO_SENDER_NUMBER="+14155550000",
        PLIVO_API_URL=plivo_url,
        LOG_LEVEL="info",
        LOG_FORMAT="json",
        MEDIA_PREFLIGHT="false",  # the tests' media URLs are served by no one
    )
    env.update({k.upper(): str(v) for k, v in overrides.items()})
    return env


class Server:
    """One `python -m app` process; stdout+stderr go to a log file for post-mortems."""

    def __init__(self, env: dict[str, str], log_path: Path, args: tuple[str, ...] = ()) -> None:
        self.port = int(env.setdefault("PORT", str(free_port())))
        host = env.setdefault("HOST", "127.0.0.1")  # the fleet's replicas use 127.0.0.11, ...
        self.url = f"http://{host}:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app", *args],
            cwd=env.pop("_CWD", str(ROOT)),
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_healthy(self, timeout: float = 30.0) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                if http_get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server not healthy after {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
