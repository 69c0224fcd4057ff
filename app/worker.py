"""The loop every background worker runs: claim due rows, work them, hand back on shutdown.

Subclasses say how to claim (one call to `app.store.claims.claim_due` inside `claim`), how
to handle one row, and how to hand a claim back. The loop runs up to `concurrency` rows at
once, claims only as many rows as it has free slots (a claimed row waits for no one), polls
when idle (or sooner when `wake` is called), and on `stop` stops claiming, lets in-flight
rows finish within the grace period, and releases what it claimed but did not start.
A row cut short by the grace period keeps its lease; what an expired lease means is
decided by the worker that claims it next (see `app.store.claims`).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from app.logging import get_logger
from app.store.db import Database, FunctionOp

log = get_logger("app.worker")


class ClaimingWorker:
    """Base class of the reconciler, the outbox and webhook delivery."""

    name = "worker"
    idle_poll_seconds = 2.0

    def __init__(self, db: Database, *, concurrency: int = 1) -> None:
        self.db = db
        self.concurrency = concurrency
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()  # new work may be due, or stopping
        self._slot_freed = asyncio.Event()  # a row finished, or stopping
        self._in_flight: set[asyncio.Task[None]] = set()
        self._busy = 0  # rows being handled (a task leaves `_in_flight` a moment later)
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # What a subclass provides ---------------------------------------------------------

    async def claim(self, conn: AsyncConnection, limit: int) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def handle(self, row: dict[str, Any]) -> None:
        raise NotImplementedError

    async def release(self, conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def can_claim(self) -> bool:
        """Whether to claim now at all (checked on the event loop, before the claim's write:
        on SQLite the claim itself runs in the writer's thread)."""
        return True

    async def after_claim(self) -> None:
        """Called after every claim attempt (metrics: backlog, age of the oldest row)."""

    # The loop --------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def in_flight(self) -> int:
        return self._busy

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name=self.name)

    def wake(self) -> None:
        """New work may be due now: claim without waiting for the next poll. Safe from any
        thread (SQLite's writer runs a batch's ops, and what they add, in a thread)."""
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if self._loop is None or here is self._loop:
            self._wake.set()
        else:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def stop(self, grace_seconds: float = 0.0) -> None:
        """Stop claiming; wait up to `grace_seconds` for rows in progress."""
        self._stopping.set()
        self._wake.set()
        self._slot_freed.set()
        if self._task is not None:
            try:
                await self._task
            except Exception as exc:  # never let it stop the rest of the shutdown
                log.error("worker_failed", worker=self.name, error=type(exc).__name__)
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=max(grace_seconds, 0.0))
        for task in list(self._in_flight):  # past the grace: their leases will expire
            task.cancel()
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=1.0)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            free = self.concurrency - self._busy
            if free <= 0:  # claim only rows that can start at once
                await self._sleep(self._slot_freed, None)
                continue
            claimed = await self._claim(free)
            for row in claimed[free:]:  # a subclass must not claim more than asked
                log.error("worker_claimed_too_many", worker=self.name)
                await self._release([row])
            for row in claimed[:free]:
                self._spawn(row)
            if len(claimed) < free:  # nothing more is due: poll, or wait for a wake-up
                await self._sleep(self._wake, self.idle_poll_seconds)

    async def _sleep(self, event: asyncio.Event, timeout: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
        if not self._stopping.is_set():
            event.clear()

    async def _claim(self, limit: int) -> list[dict[str, Any]]:
        if not self.can_claim():
            await self._report()
            return []
        try:
            rows: list[dict[str, Any]] = await self.db.write(
                FunctionOp(lambda conn: self.claim(conn, limit))
            )
        except Exception as exc:  # the store is down: /ready says so; try again later
            log.error("worker_claim_failed", worker=self.name, error=type(exc).__name__)
            rows = []
        await self._report()
        if rows and self._stopping.is_set():  # claimed while stopping: hand them back
            await self._release(rows)
            return []
        return rows

    async def _report(self) -> None:
        try:
            await self.after_claim()
        except Exception as exc:
            log.error("worker_report_failed", worker=self.name, error=type(exc).__name__)

    def _spawn(self, row: dict[str, Any]) -> None:
        self._busy += 1
        task = asyncio.create_task(self._handle(row), name=f"{self.name}-row")
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _handle(self, row: dict[str, Any]) -> None:
        try:
            await self.handle(row)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one row's trouble; its lease lets it be taken again
            log.error("worker_row_failed", worker=self.name, error=type(exc).__name__)
        finally:
            self._busy -= 1
            self._slot_freed.set()

    async def _release(self, rows: list[dict[str, Any]]) -> None:
        try:
            await self.db.write(FunctionOp(lambda conn: self.release(conn, rows)))
        except Exception as exc:  # the leases expire on their own
            log.error("worker_release_failed", worker=self.name, error=type(exc).__name__)
