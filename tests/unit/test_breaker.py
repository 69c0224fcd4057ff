"""The circuit breaker alone, on a clock the test moves (no sleeps)."""

from __future__ import annotations

import pytest

from app.plivo.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, CircuitOpen


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def breaker_on(clock: Clock, threshold: int = 3, reset: float = 30) -> CircuitBreaker:
    changes: list[str] = []
    breaker = CircuitBreaker(
        threshold=threshold, reset_seconds=reset, clock=clock, on_change=changes.append
    )
    breaker.changes = changes  # type: ignore[attr-defined]
    return breaker


def test_opens_after_threshold_consecutive_sick_sends(clock):
    breaker = breaker_on(clock, threshold=3)
    for _ in range(2):
        breaker.record(sick=True)
        assert breaker.state == CLOSED
    breaker.record(sick=True)
    assert breaker.state == OPEN
    assert breaker.changes == [OPEN]


def test_a_healthy_send_resets_the_count(clock):
    breaker = breaker_on(clock, threshold=2)
    breaker.record(sick=True)
    breaker.record(sick=False)
    breaker.record(sick=True)
    assert breaker.state == CLOSED and breaker.failures == 1


def test_open_answers_with_the_seconds_until_the_trial(clock):
    breaker = breaker_on(clock, threshold=1, reset=30)
    breaker.record(sick=True)
    clock.now += 10.2
    with pytest.raises(CircuitOpen) as refused:
        breaker.admit()
    assert refused.value.retry_after == 20  # ceil(19.8)


def test_one_trial_when_due_others_still_refused(clock):
    breaker = breaker_on(clock, threshold=1, reset=30)
    breaker.record(sick=True)
    clock.now += 30
    assert breaker.admit() is True and breaker.state == HALF_OPEN
    with pytest.raises(CircuitOpen) as refused:
        breaker.admit()
    assert refused.value.retry_after == 1


def test_a_healthy_trial_closes_a_sick_one_reopens(clock):
    breaker = breaker_on(clock, threshold=1, reset=30)
    breaker.record(sick=True)
    clock.now += 30
    assert breaker.admit() is True
    breaker.record(sick=True, trial=True)
    assert breaker.state == OPEN
    clock.now += 30
    assert breaker.admit() is True
    breaker.record(sick=False, trial=True)
    assert breaker.state == CLOSED
    assert breaker.changes == [OPEN, HALF_OPEN, OPEN, HALF_OPEN, CLOSED]


def test_a_released_trial_lets_the_next_send_be_the_trial(clock):
    breaker = breaker_on(clock, threshold=1, reset=5)
    breaker.record(sick=True)
    clock.now += 5
    assert breaker.admit() is True
    breaker.release_trial()  # e.g. it got no concurrency slot: it never reached Plivo
    assert breaker.admit() is True


def test_check_changes_nothing(clock):
    breaker = breaker_on(clock, threshold=1, reset=5)
    breaker.check()
    breaker.record(sick=True)
    clock.now += 5
    breaker.check()  # a trial is due: no exception, still OPEN until a send is admitted
    assert breaker.state == OPEN
