"""Alembic environment. The service passes an open connection (`config.attributes`), so this
file never starts an event loop of its own inside the service's running loop."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine

from app.store.tables import metadata


def run_migrations(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=True,  # SQLite can only ALTER through table copies
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_standalone(url: str) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as connection:
        await connection.run_sync(run_migrations)
    await engine.dispose()


connection = context.config.attributes.get("connection")
if connection is not None:
    run_migrations(connection)  # called through AsyncConnection.run_sync by the service
else:  # the `alembic` CLI, outside any running loop
    asyncio.run(_run_standalone(context.config.get_main_option("sqlalchemy.url") or ""))
