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
    defaults = settings()
    # preflight 3 + pacing 2 + slot 1 + Plivo 10 + the record's write and slack 20
    assert lease_seconds(defaults) == 36.0
    assert lease_seconds(settings(plivo_timeout_seconds=30)) == 56.0


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
