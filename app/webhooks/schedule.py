"""When a failed attempt is tried again: the Standard Webhooks retry schedule, jittered.

After the first attempt fails the delivery is retried 5 s, 5 min, 30 min, 2 h, 5 h and
10 h later (each delay counted from the failed attempt), then it is `failed`. Each delay
is spread by ±10 % so a burst of failures (an endpoint that was down) does not come back
as the same burst.
"""

from __future__ import annotations

import random
from collections.abc import Callable

RETRY_DELAYS_SECONDS = (5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600)
MAX_ATTEMPTS = 1 + len(RETRY_DELAYS_SECONDS)
JITTER = 0.1


def next_attempt_at(
    attempts: int, now_ms: int, uniform: Callable[[float, float], float] = random.uniform
) -> int | None:
    """After `attempts` failed attempts (at `now_ms`): the next one's time, or None when
    that was the last one (the delivery is then `failed`)."""
    if attempts < 1 or attempts > len(RETRY_DELAYS_SECONDS):
        return None
    delay = RETRY_DELAYS_SECONDS[attempts - 1] * uniform(1 - JITTER, 1 + JITTER)
    return now_ms + max(1, int(delay * 1000))
