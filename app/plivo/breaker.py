"""Circuit breaker over sends: consecutive sick outcomes open it; one trial closes it."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from app.logging import get_logger

log = get_logger("app.breaker")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitOpen(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"circuit open, retry after {retry_after}s")
        self.retry_after = retry_after


class CircuitBreaker:
    """Per process. Counts per send, not per attempt: 5xx, timeouts and connection failures."""

    def __init__(
        self,
        *,
        threshold: int,
        reset_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self.threshold = threshold
        self.reset_seconds = reset_seconds
        self._clock = clock
        self._on_change = on_change
        self.state = CLOSED
        self.failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False

    def _set(self, state: str) -> None:
        if state != self.state:
            self.state = state
            log.warning("circuit_state", state=state, consecutive_failures=self.failures)
            if self._on_change:
                self._on_change(state)

    def _seconds_to_trial(self) -> float:
        return self._opened_at + self.reset_seconds - self._clock()

    def check(self) -> None:
        """Cheap peek: raise CircuitOpen while no trial is due. Changes nothing."""
        if self.state == OPEN and self._seconds_to_trial() > 0:
            raise CircuitOpen(max(1, math.ceil(self._seconds_to_trial())))
        if self.state == HALF_OPEN and self._trial_in_flight:
            raise CircuitOpen(1)

    def admit(self) -> bool:
        """Let one send through, or raise CircuitOpen. True when this send is the trial."""
        self.check()
        if self.state == CLOSED:
            return False
        self._set(HALF_OPEN)
        self._trial_in_flight = True
        return True

    def release_trial(self) -> None:
        """The trial never reached Plivo (e.g. no slot): let the next send be the trial."""
        self._trial_in_flight = False

    def record(self, *, sick: bool, trial: bool = False) -> None:
        """A send's verdict. While half-open only the trial's own result counts: a send
        that started before the breaker opened says nothing about Plivo now."""
        if self.state == HALF_OPEN and not trial:
            return
        self._trial_in_flight = False
        if not sick:
            self.failures = 0
            self._set(CLOSED)
            return
        self.failures += 1
        if self.state == HALF_OPEN or self.failures >= self.threshold:
            self._opened_at = self._clock()
            self._set(OPEN)

    @property
    def is_open(self) -> bool:
        return self.state != CLOSED
