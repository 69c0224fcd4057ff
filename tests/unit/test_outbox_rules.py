"""The outbox's pure rules: backoff, concurrency, lease, and the Prefer header."""

from __future__ import annotations

import pytest

from app.config import Settings
from app.mms.service import prefers_async
from app.outbox import (
    BACKOFF_CAP_SECONDS,
    backoff_ms,
    lease_seconds,
    outbox_concurrency,
)
from app.store.outbox import PendingCounts


def settings(**values) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_backoff_doubles_with_jitter_up_to_its_cap():
    for failures, ceiling in ((1, 5.0), (2, 10.0), (3, 20.0), (20, BACKOFF_CAP_SECONDS)):
        delays = [backoff_ms(failures) / 1000 for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (failures, min(delays))
        assert len(set(delays)) > 100  # jittered: retries of a batch spread out


def test_backoff_never_comes_before_plivos_retry_after():
    assert backoff_ms(1, retry_after=60) == 60_000


def test_concurrency_follows_the_rate():
    assert outbox_concurrency(settings(send_rate="50/second")) == 150
    assert outbox_concurrency(settings(send_rate="0.25/second")) == 1
    assert outbox_concurrency(settings(send_rate="10000/second")) == 1000
    assert outbox_concurrency(settings(send_rate="0", plivo_max_concurrency=7)) == 7


def test_the_lease_covers_everything_a_holder_does():
    # No media check (sandbox mode's default): pacing 2 + slot 1 + Plivo 10 + the record's
    # write and slack 20.
    assert lease_seconds(settings()) == 33.0
    assert lease_seconds(settings(plivo_timeout_seconds=30)) == 53.0
    # With the check: its own 3 s per URL (URLs at once), within the send's deadline.
    assert lease_seconds(settings(media_preflight=True)) == 36.0
    assert lease_seconds(settings(media_preflight=True, plivo_timeout_seconds=2)) == 27.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (["respond-async"], True),
        (["Respond-Async"], True),
        (["wait=5, respond-async"], True),
        (["return=minimal", "respond-async; x=1"], True),
        (["return=minimal"], False),
        (["respond-async-later"], False),
        ([""], False),
        ([], False),
    ],
)
def test_prefer_respond_async(headers, expected):
    assert prefers_async(headers) is expected


# The per-key room check (OUTBOX_MAX_PENDING_PER_KEY) without a count per acceptance --------
class Store:
    """What a count of a key's scheduled rows would find, and how often it was asked."""

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}
        self.counts = 0

    async def count(self, db: object, caller: str) -> int:
        self.counts += 1
        return self.rows.get(caller, 0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pending_counts() -> tuple[PendingCounts, Store, Clock]:
    store, clock = Store(), Clock()
    return PendingCounts(clock=clock, counter=store.count), store, clock


async def accept(counts: PendingCounts, store: Store, caller: str, cap: int) -> bool:
    """One acceptance as the send route makes it: check the room, then record."""
    if await counts.count(None, caller, cap) >= cap:  # type: ignore[arg-type]
        return False
    store.rows[caller] = store.rows.get(caller, 0) + 1
    counts.accepted(caller)
    return True


async def test_far_from_the_cap_the_store_is_counted_once_a_second():
    counts, store, clock = pending_counts()
    for _ in range(500):
        assert await accept(counts, store, "a", cap=100_000)
        clock.now += 0.001  # 500 acceptances in half a second
    assert store.counts == 1
    assert await counts.count(None, "a", 100_000) == 500  # type: ignore[arg-type]
    clock.now += PendingCounts.REFRESH_SECONDS
    store.rows["a"] = 120  # the outbox sent 380 meanwhile
    assert await counts.count(None, "a", 100_000) == 120  # type: ignore[arg-type]
    assert store.counts == 2


async def test_sends_one_after_another_are_refused_exactly_at_the_cap():
    counts, store, _ = pending_counts()
    results = [await accept(counts, store, "a", cap=20) for _ in range(25)]
    assert results == [True] * 20 + [False] * 5
    assert store.rows["a"] == 20
    assert await accept(counts, store, "b", cap=20)  # another key has its own room


async def test_near_the_cap_every_acceptance_counts_and_sees_room_freed():
    counts, store, _ = pending_counts()
    for _ in range(10):
        assert await accept(counts, store, "a", cap=10)
    assert not await accept(counts, store, "a", cap=10)
    store.rows["a"] = 9  # one canceled (or sent), in this process or another
    assert await accept(counts, store, "a", cap=10)
    before = store.counts
    assert not await accept(counts, store, "a", cap=10)
    assert store.counts == before + 1  # in the last tenth: counted every time


async def test_another_replicas_acceptances_are_seen_within_a_second():
    counts, store, clock = pending_counts()
    assert await accept(counts, store, "a", cap=1000)
    store.rows["a"] = 1000  # another replica filled the key's room
    clock.now += PendingCounts.REFRESH_SECONDS / 2
    assert await accept(counts, store, "a", cap=1000)  # not yet seen: one over the cap
    clock.now += PendingCounts.REFRESH_SECONDS / 2
    assert not await accept(counts, store, "a", cap=1000)


async def test_an_acceptance_before_any_count_leaves_the_count_to_the_store():
    counts, store, _ = pending_counts()
    counts.accepted("a")  # nothing counted yet: nothing to add to
    store.rows["a"] = 3
    assert await counts.count(None, "a", 100) == 3  # type: ignore[arg-type]
    assert store.counts == 1
