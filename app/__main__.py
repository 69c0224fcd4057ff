"""`python -m app`: run the service with uvicorn (HOST, PORT, WEB_CONCURRENCY).

Exits 0 after a graceful drain on SIGTERM: uvicorn re-raises the signal once its own
shutdown is done, which would kill a single-worker process "by signal"; we catch that.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import uvicorn
from uvicorn.supervisors import Multiprocess

from app.config import ConfigError, Settings, load_settings

STARTUP_FAILED = 3


def _uvicorn_config(settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        "app.main:app",
        host=settings.host,
        port=settings.port,
        workers=settings.web_concurrency,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) or None,
        access_log=False,  # the service logs one line per request itself
        log_config=None,  # keep our structlog handlers
        server_header=False,
    )


def serve(settings: Settings) -> int:
    config = _uvicorn_config(settings)
    if settings.web_concurrency > 1:
        sock = config.bind_socket()
        Multiprocess(config, sockets=[sock]).run()
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
    if argv[:1] not in ([], ["serve"]):
        print(f"usage: python -m app [serve|migrate]; unknown {argv[0]!r}", file=sys.stderr)
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
