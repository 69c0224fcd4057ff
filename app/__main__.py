"""`python -m app`: run the service with uvicorn (HOST, PORT, WEB_CONCURRENCY).

Exits 0 after a graceful drain on SIGTERM: uvicorn re-raises the signal once its own
shutdown is done, which would kill a single-worker process "by signal"; we catch that.

With several workers, Prometheus metrics live in files in PROMETHEUS_MULTIPROC_DIR (see
app/metrics.py). prometheus-client picks its multiprocess mode when it is imported, so the
variable is set here, before the workers start; and the directory is emptied first, or
the previous run's counts would be added to this one's. Plain `uvicorn --workers` does
neither: its users must set and empty the directory themselves.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import uvicorn
from uvicorn.supervisors import Multiprocess

from app.config import ConfigError, Settings, load_settings
from app.http_protocol import KEEP_ALIVE_SECONDS

STARTUP_FAILED = 3
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # app.metrics is not imported here: see above


def prepare_multiprocess_dir(workers: int) -> Path | None:
    """Empty PROMETHEUS_MULTIPROC_DIR, or create and export one for several workers.

    Returns the directory when we created it (ours to remove at exit). Only the `*.db`
    files prometheus-client writes are deleted: a mistyped path must not cost anyone
    their files.
    """
    configured = os.environ.get(MULTIPROC_ENV)
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
        return None
    if workers <= 1:
        return None  # one process: its own in-memory registry is the truth
    created = Path(tempfile.mkdtemp(prefix="mms-gateway-metrics-"))
    os.environ[MULTIPROC_ENV] = str(created)  # inherited by the spawned workers
    return created


class _Supervisor(Multiprocess):
    """uvicorn's supervisor, telling prometheus-client about workers that died.

    A worker that exits normally does it in its lifespan; one that crashed cannot, and its
    `live*` gauges (in-flight attempts, breaker state) would linger until the next start.
    """

    def keep_subprocess_alive(self) -> None:
        before = {p.pid for p in self.processes}
        super().keep_subprocess_alive()
        gone = before - {p.pid for p in self.processes}
        if gone:
            from prometheus_client import multiprocess

            for pid in gone:
                multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def _uvicorn_config(settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        "app.main:app",
        host=settings.host,
        port=settings.port,
        workers=settings.web_concurrency,
        loop="uvloop",
        # httptools with a bound on headers and a header-read timeout (app/http_protocol.py)
        http="app.http_protocol:BoundedHttpToolsProtocol",
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        lifespan="on",
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,  # type: ignore[arg-type]  # a float works: it goes to asyncio.wait_for
        access_log=False,  # the service logs one line per request itself
        log_config=None,  # keep our structlog handlers
        server_header=False,
    )


def serve(settings: Settings) -> int:
    config = _uvicorn_config(settings)
    created = prepare_multiprocess_dir(settings.web_concurrency)
    if settings.web_concurrency > 1:
        from app.logging import get_logger

        log = get_logger("app.main")
        log.info(
            "metrics_multiprocess_dir", path=os.environ[MULTIPROC_ENV], created=created is not None
        )
        if settings.rate_limit_storage_url.startswith("memory://"):
            # Each worker counts alone: the limits and the quota become N × workers.
            workers = settings.web_concurrency
            log.warning(
                f"RATE LIMITS ARE PER WORKER: WEB_CONCURRENCY={workers} with "
                f"RATE_LIMIT_STORAGE_URL=memory:// multiplies every limit and the daily quota "
                f"by {workers}; set RATE_LIMIT_STORAGE_URL=redis://... to share them",
                workers=settings.web_concurrency,
            )
        sock = config.bind_socket()
        try:
            _Supervisor(config, sockets=[sock]).run()
        finally:
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
        return 0
    server = uvicorn.Server(config)
    # uvicorn restores these after its shutdown and then re-raises the signal it caught:
    # with no-op handlers in place, the re-raise ends here and we exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
    return 0 if server.started else STARTUP_FAILED


def main(argv: list[str]) -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    from app.logging import configure_logging

    configure_logging(
        level=settings.log_level, fmt=settings.effective_log_format, secrets=settings.secrets()
    )
    if argv[:1] == ["migrate"]:
        return asyncio.run(migrate_only(settings))
    if argv[:1] == ["optouts"]:
        from app.optouts.cli import run

        return asyncio.run(run(argv[1:], settings))
    if argv[:1] == ["webhooks"]:
        from app.webhooks.cli import run as run_webhooks

        return asyncio.run(run_webhooks(argv[1:], settings))
    if argv[:1] not in ([], ["serve"]):
        print(
            f"usage: python -m app [serve|migrate|optouts list|optouts remove +1…|"
            f"webhooks list|webhooks retry <id>]; "
            f"unknown {argv[0]!r}",
            file=sys.stderr,
        )
        return 2
    return serve(settings)


async def migrate_only(settings: Settings) -> int:
    """`python -m app migrate`: apply pending migrations (under the lock) and exit."""
    from app.store.db import Database
    from app.store.migrate import HEAD_REVISION, migrate

    db = Database(settings.database_url)
    try:
        await migrate(db.engine, sqlite_path=db.sqlite_path)
    finally:
        await db.engine.dispose()
    print(f"schema at revision {HEAD_REVISION}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
