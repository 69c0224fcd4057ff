"""The database: an async engine (SQLite or PostgreSQL) and a group-commit writer.

One SQLAlchemy+aiosqlite commit costs more CPU than the whole rest of a
send — while rows committed together cost a fraction of that each. So every write goes
through one writer task that commits whatever has queued up as one transaction, and each
caller waits for its own batch's commit (no timer: a lone write commits at once).

The writer also knows when the store cannot be written (store faults): a batch that fails
because the database is down, full, read-only, or (SQLite) because the file was deleted or
replaced under the running service puts it in a failed state, which `/ready` and the send
path read; a background probe writes until a write succeeds again. A send's record that
fails is kept in memory and written by that probe when the store returns.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from sqlalchemy import Connection, Engine, create_engine, delete, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from app.logging import get_logger
from app.store.migrate import migrate
from app.store.tables import callback_nonces

if TYPE_CHECKING:
    from app.store.webhooks import Targets

log = get_logger("app.store")
T = TypeVar("T")
MAX_BATCH = 500
WRITE_TIMEOUT_SECONDS = 15.0  # a caller never waits longer than this for its commit
FILE_CHECK_SECONDS = 0.2  # SQLite: how often a send's pre-check looks for the file
PROBE_SECONDS = 1.0  # while the store is failing: how often the background probe writes
# SQLSTATE classes that mean the database, not the statement, failed: connection (08),
# insufficient resources such as a full disk (53), operator intervention such as a
# shutdown (57), system errors (58); and 25006, a read-only transaction (a standby).
_OUTAGE_SQLSTATE_CLASSES = ("08", "53", "57", "58")
_READ_ONLY_SQLSTATE = "25006"


class StoreUnavailable(Exception):
    """The store could not take a write or answer a read (closing, or the database failed)."""


class RecordPending(StoreUnavailable):
    """The store failed, and this write was kept in memory: it is written when the store
    returns (the background probe), or logged as lost if the process stops first."""


def is_outage(exc: BaseException) -> bool:
    """True when the database itself failed (down, unreachable, full, read-only, file
    gone), as opposed to one statement being refused (a constraint, bad data, a bug)."""
    if isinstance(exc, StoreUnavailable | OSError | TimeoutError | sa_exc.TimeoutError):
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sa_exc.InterfaceError | sa_exc.DisconnectionError):
        return True
    origin = getattr(exc, "orig", None) or exc
    state = getattr(origin, "sqlstate", None)
    if isinstance(state, str) and state:
        return state[:2] in _OUTAGE_SQLSTATE_CLASSES or state == _READ_ONLY_SQLSTATE
    # SQLite reports a full disk, a read-only or vanished file, a lock held too long and
    # I/O errors as OperationalError; a refused row is IntegrityError/DataError instead.
    return isinstance(exc, sa_exc.OperationalError)


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


class _ConnectionInThread:
    """What a write op sees of its connection when the batch runs in the writer's thread:
    `await conn.execute(...)` runs the statement on a synchronous connection and returns
    at once, so the ops' code is the same on both paths. Write ops use `execute`,
    `scalar(s)` and `dialect` of their connection, and await nothing else."""

    def __init__(self, conn: Connection) -> None:
        self.sync_connection = conn
        self.dialect = conn.dialect

    async def execute(self, statement: Any, parameters: Any = None, **kwargs: Any) -> Any:
        return self.sync_connection.execute(statement, parameters, **kwargs)

    async def scalar(self, statement: Any, parameters: Any = None, **kwargs: Any) -> Any:
        return self.sync_connection.scalar(statement, parameters, **kwargs)

    async def scalars(self, statement: Any, parameters: Any = None, **kwargs: Any) -> Any:
        return self.sync_connection.scalars(statement, parameters, **kwargs)


def _finish(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (its awaits all complete at once) to its end."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coroutine.close()
    raise RuntimeError("a write op awaited something else than its connection's statements")


class ThreadedBatches:
    """Commits each batch in ONE call to a thread of its own, on a synchronous SQLAlchemy
    engine (SQLite's sqlite3 driver), instead of one hop to aiosqlite's thread for every
    statement, fetch, BEGIN and COMMIT. The ops, their SQLAlchemy statements and the
    transaction are the same; only the way to the driver changes (decision 0021)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="store-writer")

    def _commit(self, check: Callable[[], None] | None, ops: list[WriteOp]) -> list[Any]:
        if check is not None:
            check()
        with self.engine.begin() as conn:
            return _finish(_run_batch(_ConnectionInThread(conn), ops))  # type: ignore[arg-type]

    async def commit(self, ops: list[WriteOp], check: Callable[[], None] | None) -> list[Any]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._commit, check, ops)

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self.engine.dispose()


class _Probe:
    """A write that proves the store takes writes: a row written and deleted again in
    one transaction (the pages still reach the disk or the server)."""

    async def run(self, conn: AsyncConnection) -> None:
        await conn.execute(callback_nonces.insert().values(nonce=PROBE_NONCE, seen_at=0))
        await conn.execute(delete(callback_nonces).where(callback_nonces.c.nonce == PROBE_NONCE))


PROBE_NONCE = "store-probe"  # never a real nonce: those are stored as hex digests


def _describe(op: WriteOp) -> dict[str, Any]:
    """What the log may say about a write: its kind and a message's ids, never its data."""
    fields: dict[str, Any] = {"op": type(op).__name__}
    row = getattr(op, "row", None)
    if isinstance(row, dict):
        fields["message_id"] = row.get("id")
        fields["message_uuid"] = row.get("message_uuid")
    return fields


_Item = tuple[WriteOp, "asyncio.Future[Any]", bool]  # op, its caller's future, keep it


def _log_late_write(op: WriteOp, future: asyncio.Future[Any]) -> None:
    """A kept record's last try at shutdown: nobody awaits it, so the log tells (a failure
    leaves it pending, and close() logs it as lost)."""
    if not future.cancelled() and future.exception() is None:
        log.warning("record_written_late", **_describe(op))


class GroupCommitWriter:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        on_batch: Callable[[int, float], None] | None = None,
        check: Callable[[], None] | None = None,
        on_health: Callable[[bool, int], None] | None = None,
        threaded: ThreadedBatches | None = None,
    ) -> None:
        self._engine = engine
        self._threaded = threaded  # SQLite: each batch in one thread call
        self._queue: list[_Item] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._closing = False
        self._on_batch = on_batch
        self._check = check  # raises StoreUnavailable when the store must not be written
        self._on_health = on_health  # (writable, pending records) for metrics
        self.failed_since: float | None = None  # monotonic time of the first failed write
        self.pending: list[WriteOp] = []  # kept writes (records of sends Plivo has)
        self._flushing = 0
        # (deadline, future, keep) of every caller still waiting, oldest first.
        self._waiting: collections.deque[tuple[float, asyncio.Future[Any], bool]] = (
            collections.deque()
        )
        self._deadline_timer: asyncio.TimerHandle | None = None

    @property
    def records_pending(self) -> int:
        """Kept writes not yet committed (waiting, or being written by the probe)."""
        return len(self.pending) + self._flushing

    @property
    def failing(self) -> bool:
        return self.failed_since is not None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="store-writer")

    async def submit(self, op: WriteOp, *, keep: bool = False) -> Any:
        """Run `op` in the next batch. `keep`: when the store fails, keep the op in memory
        and write it when the store returns (raises RecordPending meanwhile)."""
        if self._closing:
            raise StoreUnavailable("the store is closing")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((op, future, keep))
        self._wake.set()
        # One timer for every waiting caller (not one each): deadlines only grow.
        waiting = self._waiting
        while waiting and waiting[0][1].done():
            waiting.popleft()
        waiting.append((loop.time() + WRITE_TIMEOUT_SECONDS, future, keep))
        if self._deadline_timer is None:
            self._deadline_timer = loop.call_at(waiting[0][0], self._expire)
        return await future

    def _expire(self) -> None:
        """Fail the callers whose commit did not come in time. The op may still commit
        later: callers treat this like any store failure (an Idempotency-Key's lease covers
        a send whose record is late). A kept op stays queued, so it is written or kept
        pending whatever happens next."""
        self._deadline_timer = None
        loop = asyncio.get_running_loop()
        waiting, now = self._waiting, loop.time()
        while waiting and (waiting[0][1].done() or waiting[0][0] <= now):
            _, future, keep = waiting.popleft()
            if not future.done():
                error = RecordPending if keep else StoreUnavailable
                future.set_exception(error("the store did not commit in time"))
        if waiting:
            self._deadline_timer = loop.call_at(waiting[0][0], self._expire)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                await self._commit(batch)
            if self._closing:
                return

    async def _commit(self, batch: list[_Item]) -> bool:
        """Commit the batch; False when the store is down (the whole batch then failed)."""
        started = time.perf_counter()
        try:
            if self._threaded is not None:
                results = await self._threaded.commit([op for op, _, _ in batch], self._check)
            else:
                if self._check is not None:
                    self._check()
                async with self._engine.begin() as conn:
                    results = await _run_batch(conn, [op for op, _, _ in batch])
        except Exception as exc:
            if is_outage(exc):
                # The database is down: every op would fail the same way, so the batch
                # fails at once instead of op by op.
                self._outage(batch, exc)
                return False
            if len(batch) > 1:
                # One op was refused (bad data, a lost race, a bug): split the batch so
                # the others still commit, in their order; the failing op fails alone.
                middle = len(batch) // 2
                if not await self._commit(batch[:middle]):
                    self._outage(batch[middle:], exc)
                    return False
                return await self._commit(batch[middle:])
            op, future, _ = batch[0]
            # Parameters are never logged (hide_parameters): they may hold message text.
            log.error("store_op_failed", error=type(exc).__name__, **_describe(op))
            if not future.done():
                future.set_exception(StoreUnavailable(type(exc).__name__))
            return True
        if self._on_batch:
            self._on_batch(len(batch), time.perf_counter() - started)
        self._healthy()
        for (_, future, _), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
        return True

    def _outage(self, batch: list[_Item], exc: Exception) -> None:
        if self.failed_since is None:
            self.failed_since = time.monotonic()
            log.error("store_write_failed", error=type(exc).__name__, ops=len(batch))
        for op, future, keep in batch:
            if keep:
                self.pending.append(op)
                if not future.done():
                    future.set_exception(RecordPending(type(exc).__name__))
            elif not future.done():
                future.set_exception(StoreUnavailable(type(exc).__name__))
        self._report()
        if self._probe_task is None and not self._closing:
            self._probe_task = asyncio.create_task(self._probe(), name="store-probe")

    def fail(self, exc: Exception) -> None:
        """Enter the failed state without a write (e.g. the SQLite file is seen gone)."""
        self._outage([], exc)

    def _healthy(self) -> None:
        if self.failed_since is not None:
            log.warning(
                "store_write_recovered",
                failed_seconds=round(time.monotonic() - self.failed_since, 1),
                pending=len(self.pending),
            )
            self.failed_since = None
            self._report()

    def _report(self) -> None:
        if self._on_health:
            self._on_health(self.failed_since is None, len(self.pending))

    async def _probe(self) -> None:
        """While writes fail or records wait: a round every PROBE_SECONDS."""
        try:
            while (self.failing or self.records_pending) and not self._closing:
                await asyncio.sleep(PROBE_SECONDS)
                await self.flush()
        finally:
            self._probe_task = None

    async def flush(self) -> None:
        """One probe round: write the kept records, or a probe row when none wait. Any
        write that commits ends the failed state; the kept ones are logged as written."""
        kept, self.pending = self.pending, []
        if not kept:
            with contextlib.suppress(StoreUnavailable):
                await self.submit(_Probe())
            return
        self._flushing = len(kept)  # still pending until their commit is known
        try:
            results = await asyncio.gather(
                *(self.submit(op, keep=True) for op in kept), return_exceptions=True
            )
        finally:
            self._flushing = 0
        for op, result in zip(kept, results, strict=True):
            if not isinstance(result, BaseException):
                log.warning("record_written_late", **_describe(op))
            elif not isinstance(result, RecordPending):  # refused alone: not an outage
                log.error("record_lost", reason="refused", **_describe(op))
        self._report()

    async def close(self) -> None:
        """Commit what is queued, then stop; kept records get one last try."""
        if self.pending:
            kept, self.pending = self.pending, []
            for op in kept:
                future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                future.add_done_callback(functools.partial(_log_late_write, op))
                self._queue.append((op, future, True))
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        for op in self.pending:
            # The last trace of a message Plivo accepted: reconciliation cannot find it.
            log.error("record_lost", reason="store_unavailable_at_shutdown", **_describe(op))
        if self._threaded is not None:
            self._threaded.close()


def _sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    if parsed.database == ":memory:":
        return None
    return Path(parsed.database).resolve()


WAL_SWITCH_ATTEMPTS = 100  # x 20 ms: only a new file, only while another process holds it


def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA busy_timeout=5000")  # several workers share one file
    _use_wal(cursor)  # readers never block the writer
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable against a process crash in WAL
    cursor.close()


def _use_wal(cursor: Any) -> None:
    """WAL is a property of the file, set once. Switching a new file needs a lock that the
    busy timeout does not wait for, so two processes creating the store at once (workers,
    replicas) could see "database is locked": the switch is retried briefly then."""
    cursor.execute("PRAGMA journal_mode")
    if str(cursor.fetchone()[0]).lower() == "wal":
        return
    for attempt in range(WAL_SWITCH_ATTEMPTS):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except Exception as exc:
            if "locked" not in str(exc) or attempt == WAL_SWITCH_ATTEMPTS - 1:
                raise
            time.sleep(0.02)  # at connect time only, on a file being created


RAW_POOL_SIZE = 10  # fetch_value's connections: lookups are short, as many as the read pool


async def _keep_session(connection: Any) -> None:
    return None


class Database:
    def __init__(
        self,
        url: str,
        *,
        on_batch: Callable[[int, float], None] | None = None,
        on_health: Callable[[bool, int], None] | None = None,
    ) -> None:
        self.url = url
        self.sqlite_path = _sqlite_path(url)
        self.dialect = make_url(url).get_backend_name()
        self._file_identity: tuple[int, int] | None = None
        self._file_checked_at = -FILE_CHECK_SECONDS
        self._raw_pool: Any = None  # PostgreSQL: fetch_value's asyncpg pool, made on first use
        self._raw_pool_lock = asyncio.Lock()
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
        threaded = None
        if self.sqlite_path is not None:
            # The same file through the synchronous sqlite3 driver, for the writer's thread.
            sync_engine = create_engine(
                make_url(url).set(drivername="sqlite"),
                pool_size=1,
                max_overflow=0,
                hide_parameters=True,
            )
            event.listen(sync_engine, "connect", _sqlite_pragmas)
            threaded = ThreadedBatches(sync_engine)
        self.writer = GroupCommitWriter(
            self.engine,
            on_batch=on_batch,
            check=self.check_file,
            on_health=on_health,
            threaded=threaded,
        )
        # Which webhook endpoints get events (set at startup from WEBHOOKS): every write
        # that causes an event takes it from here.
        from app.store.webhooks import NO_TARGETS  # (it builds on this module's ops)

        self.webhooks: Targets = NO_TARGETS

    async def start(self) -> None:
        await migrate(self.engine, sqlite_path=self.sqlite_path)
        if self.sqlite_path is not None:
            stat = os.stat(self.sqlite_path)
            self._file_identity = (stat.st_dev, stat.st_ino)
        self.writer.start()

    def check_file(self) -> None:
        """SQLite: raise StoreUnavailable when the file opened at start is no longer at its
        path. A deleted file stays writable through the open handles, so without this
        check writes would succeed into a file nobody will ever read again. A replaced
        file is not reopened either: that takes a restart (the old handles share the
        -wal and -shm files by name with any new one)."""
        if self._file_identity is None or self.sqlite_path is None:
            return
        try:
            stat = os.stat(self.sqlite_path)
        except OSError:
            raise StoreUnavailable("the database file was deleted") from None
        if (stat.st_dev, stat.st_ino) != self._file_identity:
            raise StoreUnavailable("the database file was replaced")

    def _file_due(self) -> bool:
        """At most one look at the file per FILE_CHECK_SECONDS from the event loop: a stat
        releases the GIL, and taking it back behind the writer's thread costs a send far
        more than the stat. The writer still checks before every commit: a send that
        starts in the window after a deletion has its record kept in memory, as a send in
        flight at the deletion does, and the sends after it are refused."""
        now = time.monotonic()
        if now - self._file_checked_at < FILE_CHECK_SECONDS:
            return False
        self._file_checked_at = now
        return True

    @property
    def writable(self) -> bool:
        """False while the last write failed, a send's record waits in memory, or (SQLite)
        the database file is gone: `/ready` is 503 and new sends are refused."""
        if self._file_identity is not None and not self.writer.failing and self._file_due():
            try:
                self.check_file()
            except StoreUnavailable as exc:
                # Seen before any write failed: enter the failed state now, so sends are
                # refused before Plivo and the probe starts.
                self.writer.fail(exc)
        return not self.writer.failing and not self.writer.records_pending

    @property
    def records_pending(self) -> int:
        return self.writer.records_pending

    async def write(self, op: WriteOp, *, keep: bool = False) -> Any:
        """Commit `op` with the next batch. `keep=True` for a record that must not be lost
        (a send Plivo has): if the store fails it is kept and written when the store
        returns, and RecordPending is raised meanwhile."""
        return await self.writer.submit(op, keep=keep)

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """`async with db.read() as conn:` — a pooled connection for queries. A database
        that cannot answer (refused connection, timeout, dropped link) raises
        StoreUnavailable: a 503, never a 500."""
        try:
            async with self.engine.connect() as conn:
                yield conn
        except Exception as exc:
            if isinstance(exc, StoreUnavailable) or not is_outage(exc):
                raise
            log.error("store_read_failed", error=type(exc).__name__)
            raise StoreUnavailable(type(exc).__name__) from exc

    async def fetch_value(self, query: str, *args: Any) -> Any:
        """PostgreSQL: the first column of the first row of one plain query, through a small
        asyncpg pool of its own. For a lookup made on every send: SQLAlchemy's pooled read
        pings, begins and rolls back around it — several round trips for one (decision
        0021). The query runs in autocommit, so it sees every commit of every replica. A
        database that cannot answer raises StoreUnavailable, as `read()` does."""
        import asyncpg

        try:
            pool = self._raw_pool or await self._start_raw_pool()
            return await pool.fetchval(query, *args)
        except Exception as exc:
            if not (is_outage(exc) or isinstance(exc, asyncpg.InterfaceError)):
                raise
            log.error("store_read_failed", error=type(exc).__name__)
            raise StoreUnavailable(type(exc).__name__) from exc

    async def _start_raw_pool(self) -> Any:
        import asyncpg

        async with self._raw_pool_lock:
            if self._raw_pool is None:
                _, params = self.engine.dialect.create_connect_args(self.engine.url)
                # SQLAlchemy's own URL options are not asyncpg's.
                cache = params.pop("prepared_statement_cache_size", None)
                params.pop("prepared_statement_name_func", None)
                if cache is not None:
                    params["statement_cache_size"] = cache
                self._raw_pool = await asyncpg.create_pool(
                    min_size=1,
                    max_size=RAW_POOL_SIZE,
                    timeout=5,
                    command_timeout=10,
                    # Released connections ran one read in autocommit and changed no session
                    # state: the default reset (another round trip each time) has nothing to undo.
                    reset=_keep_session,
                    **params,
                )
        return self._raw_pool

    async def ping(self, timeout: float = 2.0) -> bool:
        try:
            async with asyncio.timeout(timeout), self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception:
            return False
        return True

    async def close(self) -> None:
        await self.writer.close()
        if self._raw_pool is not None:
            await self._raw_pool.close()
        await self.engine.dispose()
