"""The retry schedule of webhook deliveries, with the jitter injected."""

from __future__ import annotations

import pytest

from app.webhooks.schedule import MAX_ATTEMPTS, RETRY_DELAYS_SECONDS, next_attempt_at

NOW = 1_800_000_000_000


def low(a: float, b: float) -> float:
    return a


def high(a: float, b: float) -> float:
    return b


def middle(a: float, b: float) -> float:
    return (a + b) / 2


def test_the_standard_webhooks_delays_then_failed():
    delays = [next_attempt_at(n, NOW, middle) for n in range(1, MAX_ATTEMPTS + 1)]
    assert [None if d is None else (d - NOW) // 1000 for d in delays] == [
        5,
        300,
        1800,
        7200,
        18000,
        36000,
        None,  # the seventh attempt was the last
    ]
    assert MAX_ATTEMPTS == 7 and RETRY_DELAYS_SECONDS[-1] == 36000


@pytest.mark.parametrize("attempts", range(1, MAX_ATTEMPTS))
def test_jitter_is_ten_percent_either_way(attempts):
    base = RETRY_DELAYS_SECONDS[attempts - 1] * 1000
    assert next_attempt_at(attempts, NOW, low) == NOW + int(base * 0.9)
    assert next_attempt_at(attempts, NOW, high) == NOW + int(base * 1.1)


def test_the_jitter_draws_from_the_band():
    seen = []

    def record(a: float, b: float) -> float:
        seen.append((a, b))
        return a

    next_attempt_at(1, NOW, record)
    assert seen == [(0.9, 1.1)]


def test_no_attempt_yet_or_past_the_last_is_none():
    assert next_attempt_at(0, NOW, middle) is None
    assert next_attempt_at(MAX_ATTEMPTS, NOW, middle) is None
    assert next_attempt_at(MAX_ATTEMPTS + 5, NOW, middle) is None
