"""The send route's limits on process memory: what is tested, what is counted, and what a
refusal says. (The moving window itself is the `limits` library's; over HTTP and on Redis
in tests/test_ratelimit.py.)"""

from __future__ import annotations

import pytest

from app.errors import DestinationRateLimited, QuotaExceeded
from app.ratelimit import Limits, LimitStore, client_key


def limits(per_destination: str = "2/hour", quota: int = 0) -> Limits:
    refused: list[str] = []
    built = Limits(
        LimitStore("memory://"),
        per_ip="3/minute",
        per_destination=per_destination,
        daily_quota=quota,
        on_reject=refused.append,
    )
    built.refused = refused  # type: ignore[attr-defined]
    return built


async def test_testing_counts_nothing():
    limiter = limits("1/hour")
    for _ in range(5):
        await limiter.test_send(destination="+14155550100", caller="alpha")
    await limiter.count_send(destination="+14155550100", caller="alpha")
    with pytest.raises(DestinationRateLimited):
        await limiter.test_send(destination="+14155550100", caller="alpha")


async def test_the_destination_limit_is_across_callers_and_per_number():
    limiter = limits("2/hour")
    await limiter.count_send(destination="+14155550100", caller="alpha")
    await limiter.count_send(destination="+14155550100", caller="bravo")
    with pytest.raises(DestinationRateLimited) as refused:
        await limiter.test_send(destination="+14155550100", caller="charlie")
    assert int(refused.value.headers["Retry-After"]) > 0
    await limiter.test_send(destination="+14155550199", caller="alpha")  # another number
    assert limiter.refused == ["destination"]


async def test_the_quota_is_per_caller_and_retries_after_midnight():
    limiter = limits("100/hour", quota=1)
    await limiter.count_send(destination="+14155550100", caller="alpha")
    with pytest.raises(QuotaExceeded) as refused:
        await limiter.test_send(destination="+14155550101", caller="alpha")
    assert 0 < int(refused.value.headers["Retry-After"]) <= 24 * 3600
    await limiter.test_send(destination="+14155550101", caller="bravo")


async def test_a_destination_refusal_does_not_use_up_the_quota():
    limiter = limits("1/hour", quota=2)
    await limiter.count_send(destination="+14155550100", caller="alpha")
    with pytest.raises(DestinationRateLimited):
        await limiter.test_send(destination="+14155550100", caller="alpha")
    await limiter.count_send(destination="+14155550101", caller="alpha")  # quota: 2 of 2


async def test_the_per_client_limit_counts_every_check():
    limiter = limits()
    verdicts = [await limiter.check_client("203.0.113.7") for _ in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, True, False]
    assert (await limiter.check_client("203.0.113.8")).allowed


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::9", "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
    ],
)
def test_client_keys(address, key):
    assert client_key(address) == key


def test_a_remembered_key_is_the_librarys_key(monkeypatch):
    from limits import parse

    from app import ratelimit

    monkeypatch.setattr(ratelimit, "KEYS_REMEMBERED", 2)
    original = parse("5/minute")
    item = ratelimit.remembering_keys(original)
    assert (item.amount, item.get_expiry(), str(item)) == (5, 60, str(original))
    for identifiers in [("ip", "10.0.0.1"), ("ip", "10.0.0.2"), ("ip", "a/b"), ("ip", "10.0.0.1")]:
        assert item.key_for(*identifiers) == original.key_for(*identifiers)
    assert len(item._keys) <= 2  # bounded: forgotten, then rebuilt the same


async def test_memory_counts_through_the_librarys_bare_storage_methods():
    from app.ratelimit import QuietMemoryStorage

    for name in ("acquire_entry", "get_moving_window", "incr", "get"):
        assert not hasattr(getattr(QuietMemoryStorage, name), "__wrapped__"), name
    limiter = limits()
    verdicts = [await limiter.check_client("10.0.0.1") for _ in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, True, False]
    assert [v.remaining for v in verdicts] == [2, 1, 0, 0]
