"""Apply Alembic migrations under a lock, so replicas and workers that start together are safe.

PostgreSQL: a session-level advisory lock. SQLite: an exclusive file lock beside the
database. Alembic is imported only when the schema is behind, which keeps it off the
cold-start path of a service that is already up to date.
"""

from __future__ import annotations

import asyncio
import fcntl
import zlib
from pathlib import Path
from typing import IO, Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.logging import get_logger

MIGRATIONS = Path(__file__).parent / "migrations"
HEAD_REVISION = "0005"  # latest file in migrations/versions (a test keeps them in step)
_LOCK_ID = zlib.crc32(b"mms-gateway-migrations")
log = get_logger("app.migrate")


async def current_revision(conn: AsyncConnection) -> str | None:
    try:
        result = await conn.execute(text("SELECT version_num FROM alembic_version"))
    except DBAPIError:
        await conn.rollback()
        return None
    row = result.first()
    return str(row[0]) if row else None


def _upgrade(sync_conn: Any) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = sync_conn
    command.upgrade(config, "head")


def _open_locked(path: Path) -> IO[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 - closed by the caller, after the migration
    fcntl.flock(handle, fcntl.LOCK_EX)  # blocks (in a thread) while another process migrates
    return handle


async def migrate(engine: AsyncEngine, *, sqlite_path: Path | None) -> None:
    """Bring the schema to HEAD_REVISION; a no-op (one query) when it already is."""
    async with engine.connect() as conn:
        if await current_revision(conn) == HEAD_REVISION:
            return
    if sqlite_path is not None:
        lock_path = sqlite_path.with_name(sqlite_path.name + ".migrate.lock")
        handle = await asyncio.to_thread(_open_locked, lock_path)
        try:
            await _upgrade_now(engine)
        finally:
            handle.close()  # closing releases the lock
        return
    async with engine.connect() as conn:
        await conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _LOCK_ID})
        try:
            await conn.commit()
            if await current_revision(conn) != HEAD_REVISION:
                await conn.run_sync(_upgrade)
                await conn.commit()
                log.info("migrated", revision=HEAD_REVISION)
        finally:
            await conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": _LOCK_ID})
            await conn.commit()


async def _upgrade_now(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        if await current_revision(conn) != HEAD_REVISION:
            await conn.run_sync(_upgrade)
            await conn.commit()
            log.info("migrated", revision=HEAD_REVISION)
