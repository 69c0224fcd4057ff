"""The claim loop every background worker runs (app/worker.py), on an in-memory queue.

The store is replaced by a list of due rows: what is under test is the loop — how much it
claims, how many rows run at once, waking, stopping and handing claims back — not SQL
(tests/store/test_claims.py runs the claim statement on both stores).
"""

from __future__ import annotations

import asyncio
from typing import Any

from app.worker import ClaimingWorker


class ListStore:
    """Stands in for `Database`: a write runs the op with no connection."""

    async def write(self, op: Any, *, keep: bool = False) -> Any:
        return await op.run(None)


class ListWorker(ClaimingWorker):
    name = "test-worker"
    idle_poll_seconds = 30.0  # only a wake-up or a slot makes it claim again in a test

    def __init__(self, rows: list[int], *, concurrency: int, hold: asyncio.Event) -> None:
        super().__init__(ListStore(), concurrency=concurrency)  # type: ignore[arg-type]
        self.due = list(rows)
        self.hold = hold
        self.claims: list[int] = []  # how many rows each claim asked for
        self.running = 0
        self.most_running = 0
        self.done: list[int] = []
        self.released: list[int] = []
        self.fail_on: set[int] = set()

    async def claim(self, conn: Any, limit: int) -> list[dict[str, Any]]:
        self.claims.append(limit)
        taken, self.due = self.due[:limit], self.due[limit:]
        return [{"id": row} for row in taken]

    async def handle(self, row: dict[str, Any]) -> None:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await self.hold.wait()
            if row["id"] in self.fail_on:
                raise RuntimeError("this row's trouble")
            self.done.append(row["id"])
        finally:
            self.running -= 1

    async def release(self, conn: Any, rows: list[dict[str, Any]]) -> None:
        self.released.extend(row["id"] for row in rows)


async def until(condition: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - the worker signals nothing to wait on
            await asyncio.sleep(0.001)


async def test_claims_no_more_rows_than_free_slots():
    """A claimed row starts at once: nothing waits in memory under a lease."""
    hold = asyncio.Event()
    worker = ListWorker(list(range(10)), concurrency=3, hold=hold)
    worker.start()
    await until(lambda: worker.running == 3)
    assert worker.claims == [3]
    assert worker.due == list(range(3, 10))
    hold.set()
    await until(lambda: len(worker.done) == 10)
    assert worker.most_running == 3
    assert all(limit <= 3 for limit in worker.claims)
    await worker.stop()


async def test_a_freed_slot_claims_again_without_waiting_for_the_poll():
    hold = asyncio.Event()
    hold.set()
    worker = ListWorker(list(range(5)), concurrency=1, hold=hold)
    worker.start()
    await until(lambda: len(worker.done) == 5, timeout=2.0)  # the poll is 30 s
    assert worker.done == [0, 1, 2, 3, 4]
    await worker.stop()


async def test_wake_claims_new_work_before_the_next_poll():
    hold = asyncio.Event()
    hold.set()
    worker = ListWorker([], concurrency=2, hold=hold)
    worker.start()
    await until(lambda: worker.claims == [2])  # found nothing: now idle for 30 s
    worker.due.append(7)
    worker.wake()
    await until(lambda: worker.done == [7], timeout=2.0)
    await worker.stop()


async def test_one_failing_row_does_not_stop_the_loop():
    hold = asyncio.Event()
    hold.set()
    worker = ListWorker([1, 2, 3], concurrency=1, hold=hold)
    worker.fail_on = {1}
    worker.start()
    await until(lambda: worker.done == [2, 3])
    assert worker._task is not None and not worker._task.done()
    await worker.stop()


async def test_stop_lets_rows_in_progress_finish_within_the_grace():
    hold = asyncio.Event()
    worker = ListWorker([1, 2], concurrency=2, hold=hold)
    worker.start()
    await until(lambda: worker.running == 2)
    stopping = asyncio.create_task(worker.stop(grace_seconds=5.0))
    await asyncio.sleep(0.05)
    assert not stopping.done()  # waiting for the two rows
    hold.set()
    await asyncio.wait_for(stopping, 2.0)
    assert sorted(worker.done) == [1, 2]


async def test_stop_cancels_rows_still_running_after_the_grace():
    """Past the grace the row is abandoned with its lease: its next claimer decides."""
    hold = asyncio.Event()
    worker = ListWorker([1], concurrency=1, hold=hold)
    worker.start()
    await until(lambda: worker.running == 1)
    await asyncio.wait_for(worker.stop(grace_seconds=0.05), 2.0)
    assert worker.done == [] and worker.running == 0
    assert worker.in_flight == 0


async def test_stop_claims_nothing_more_and_hands_back_a_claim_made_while_stopping():
    hold = asyncio.Event()
    hold.set()
    worker = ListWorker([], concurrency=1, hold=hold)
    claimed_during_stop = asyncio.Event()

    async def claim_as_stop_begins(conn: Any, limit: int) -> list[dict[str, Any]]:
        worker._stopping.set()  # the claim's write commits just as SIGTERM arrives
        claimed_during_stop.set()
        return [{"id": 9}]

    worker.claim = claim_as_stop_begins  # type: ignore[method-assign]
    worker.start()
    await claimed_during_stop.wait()
    await worker.stop()
    assert worker.released == [9]
    assert worker.done == []


async def test_wake_from_another_thread_reaches_the_loop():
    """SQLite's writer runs a batch in a thread: an event added there wakes the worker."""
    hold = asyncio.Event()
    hold.set()
    worker = ListWorker([], concurrency=1, hold=hold)
    worker.start()
    await until(lambda: worker.claims == [1])
    worker.due.append(5)
    await asyncio.to_thread(worker.wake)
    await until(lambda: worker.done == [5], timeout=2.0)
    await worker.stop()
