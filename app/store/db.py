"""The database: an async engine (SQLite or PostgreSQL) and a group-commit writer.

One SQLAlchemy+aiosqlite commit costs more CPU than the whole rest of a
send — while rows committed together cost a fraction of that each. So every write goes
through one writer task that commits whatever has queued up as one transaction, and each
caller waits for its own batch's commit (no timer: a lone write commits at once).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from app.logging import get_logger
from app.store.migrate import migrate

log = get_logger("app.store")
T = TypeVar("T")
MAX_BATCH = 500
WRITE_TIMEOUT_SECONDS = 15.0  # a caller never waits longer than this for its commit


class StoreUnavailable(Exception):
    """The store could not take a write (closing, or the database failed)."""


class WriteOp(Protocol):
    """A unit of work run inside the writer's transaction."""

    async def run(self, conn: AsyncConnection) -> Any: ...


class BatchedOp:
    """A write op whose batch-mates of the same class run together (e.g. one executemany)."""

    batched: ClassVar[bool] = True

    @classmethod
    async def run_many(cls, conn: AsyncConnection, ops: Sequence[Any]) -> list[Any]:
        raise NotImplementedError

    async def run(self, conn: AsyncConnection) -> Any:
        return (await type(self).run_many(conn, [self]))[0]


class FunctionOp:
    """Any coroutine function of a connection, as a write op."""

    def __init__(self, function: Callable[[AsyncConnection], Any]) -> None:
        self.function = function

    async def run(self, conn: AsyncConnection) -> Any:
        return await self.function(conn)


async def _run_batch(conn: AsyncConnection, ops: list[WriteOp]) -> list[Any]:
    """Run ops in order, batching consecutive runs of the same BatchedOp class."""
    results: list[Any] = []
    i = 0
    while i < len(ops):
        op = ops[i]
        if isinstance(op, BatchedOp):
            j = i
            while j < len(ops) and type(ops[j]) is type(op):
                j += 1
            results.extend(await type(op).run_many(conn, ops[i:j]))
            i = j
        else:
            results.append(await op.run(conn))
            i += 1
    return results


class GroupCommitWriter:
    def __init__(
        self, engine: AsyncEngine, *, on_batch: Callable[[int, float], None] | None = None
    ) -> None:
        self._engine = engine
        self._queue: list[tuple[WriteOp, asyncio.Future[Any]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._on_batch = on_batch

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="store-writer")

    async def submit(self, op: WriteOp) -> Any:
        if self._closing:
            raise StoreUnavailable("the store is closing")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((op, future))
        self._wake.set()
        try:
            async with asyncio.timeout(WRITE_TIMEOUT_SECONDS):
                return await future
        except TimeoutError:
            # The op may still commit later: callers treat this like any store failure
            # (an Idempotency-Key's lease covers a send whose record is late).
            raise StoreUnavailable("the store did not commit in time") from None

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                await self._commit(batch)
            if self._closing:
                return

    async def _commit(self, batch: list[tuple[WriteOp, asyncio.Future[Any]]]) -> None:
        started = time.perf_counter()
        try:
            async with self._engine.begin() as conn:
                results = await _run_batch(conn, [op for op, _ in batch])
        except Exception as exc:
            if len(batch) > 1 and isinstance(exc, IntegrityError | DataError):
                # One op's data was refused: isolate it, the others still commit. (A
                # database that is down fails the whole batch at once, below.)
                for item in batch:
                    await self._commit([item])
                return
            # Parameters are never logged (hide_parameters): they may hold message text.
            log.error("store_write_failed", error=type(exc).__name__, ops=len(batch))
            for _, future in batch:
                if not future.done():
                    future.set_exception(StoreUnavailable(type(exc).__name__))
            return
        if self._on_batch:
            self._on_batch(len(batch), time.perf_counter() - started)
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def close(self) -> None:
        """Commit what is queued, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task


def _sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    if parsed.database == ":memory:":
        return None
    return Path(parsed.database).resolve()


def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable against a process crash in WAL
    cursor.execute("PRAGMA busy_timeout=5000")  # several workers share one file
    cursor.close()


class Database:
    def __init__(self, url: str, *, on_batch: Callable[[int, float], None] | None = None) -> None:
        self.url = url
        self.sqlite_path = _sqlite_path(url)
        self.dialect = make_url(url).get_backend_name()
        if self.sqlite_path is not None:
            self.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_async_engine(
                url, pool_size=8, max_overflow=8, pool_timeout=10, hide_parameters=True
            )
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_async_engine(
                url,
                pool_size=10,
                max_overflow=10,
                pool_timeout=10,
                pool_pre_ping=True,
                hide_parameters=True,  # errors never carry values (message text) into logs
                connect_args={"timeout": 5, "command_timeout": 10},
            )
        self.writer = GroupCommitWriter(self.engine, on_batch=on_batch)

    async def start(self) -> None:
        await migrate(self.engine, sqlite_path=self.sqlite_path)
        self.writer.start()

    async def write(self, op: WriteOp) -> Any:
        return await self.writer.submit(op)

    def read(self) -> Any:
        """`async with db.read() as conn:` — a pooled connection for queries."""
        return self.engine.connect()

    async def ping(self, timeout: float = 2.0) -> bool:
        try:
            async with asyncio.timeout(timeout), self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception:
            return False
        return True

    async def close(self) -> None:
        await self.writer.close()
        await self.engine.dispose()
