"""The pacer (SEND_RATE): the GCRA on a clock we control, the Redis script on the real
Redis, the fallback when Redis is down, and the send route over HTTP."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from app.config import ConfigError, load_settings
from app.errors import SendRateExceeded
from app.pacing import REDIS_KEY, MemoryGcra, Pacer, Rate, RedisGcra, parse_rate
from app.ratelimit import LimitStore
from tests.helpers import API_KEYS, KEY_A, VALID
from tests.server import free_port

SEND = "/api/mms/send"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def gcra(rate: str) -> tuple[MemoryGcra, FakeClock]:
    clock = FakeClock()
    return MemoryGcra(Rate.per_second(parse_rate(rate)), clock), clock


# The GCRA, per process, on a fake clock ------------------------------------------------
def test_a_burst_of_one_seconds_worth_goes_through_without_waiting():
    pacer, _ = gcra("5/second")
    assert [pacer.reserve(0).delay for _ in range(5)] == [0, 0, 0, 0, 0]


def test_the_first_send_beyond_the_burst_waits_exactly_one_interval():
    pacer, _ = gcra("5/second")
    for _ in range(5):
        pacer.reserve(None)
    reservation = pacer.reserve(None)
    assert reservation.granted and reservation.delay == 0.2


def test_slots_are_handed_out_first_come_first_served():
    """Each reservation gets the next slot, later than every earlier one, also as time
    passes: no one can jump the queue by asking at the right moment."""
    pacer, clock = gcra("4/second")
    for _ in range(4):
        pacer.reserve(None)
    delays = [pacer.reserve(None).delay for _ in range(3)]
    assert delays == [0.25, 0.5, 0.75]
    clock.now += 0.1  # the queue has not drained: the next slot is after all of them
    assert pacer.reserve(None).delay == pytest.approx(0.9)
    clock.now += 10  # idle: the full burst is available again
    assert [pacer.reserve(0).delay for _ in range(4)] == [0, 0, 0, 0]


def test_a_refusal_beyond_the_max_wait_holds_no_slot():
    pacer, clock = gcra("1/second")
    assert pacer.reserve(0).delay == 0
    refused = pacer.reserve(0.5)
    assert not refused.granted and refused.delay == 1.0  # when a slot would be free
    for _ in range(3):
        assert not pacer.reserve(0.5).granted
    taken = pacer.reserve(None)  # the refusals took nothing: the next slot is still in 1 s
    assert taken.granted and taken.delay == 1.0
    clock.now += 1.5
    assert pacer.reserve(0.5).delay == 0.5


def test_a_wait_exactly_at_the_limit_is_granted():
    pacer, _ = gcra("2/second")
    pacer.reserve(0)
    pacer.reserve(0)
    reservation = pacer.reserve(0.5)
    assert reservation.granted and reservation.delay == 0.5


@pytest.mark.parametrize(
    ("rate", "interval"),
    [("30/minute", 2.0), ("120/hour", 30.0), ("1/hour", 3600.0), ("0.25/second", 4.0)],
)
def test_slow_rates_allow_one_at_once_then_one_per_interval(rate, interval):
    pacer, clock = gcra(rate)
    assert pacer.reserve(0).delay == 0
    assert not pacer.reserve(interval - 0.001).granted
    assert pacer.reserve(None).delay == interval
    clock.now += interval * 2
    assert pacer.reserve(0).delay == 0


def test_a_fractional_rate_keeps_its_fraction():
    """2.5/second: a burst of 2 (one second's worth, whole sends), then one per 0.4 s."""
    pacer, _ = gcra("2.5/second")
    assert [pacer.reserve(None).delay for _ in range(4)] == [0, 0, 0.4, 0.8]


@pytest.mark.parametrize(
    ("value", "per_second"),
    [
        ("0", 0.0),
        ("50/second", 50.0),
        ("0.25/second", 0.25),
        ("50/minute", 50 / 60),
        ("3600/hour", 1.0),
        (" 2 / Second ", 2.0),
    ],
)
def test_send_rate_values(value, per_second):
    settings = load_settings(_env_file=None, send_rate=value)
    assert settings.send_rate_per_second == pytest.approx(per_second)


@pytest.mark.parametrize(
    "value",
    ["fast", "50", "50/day", "50/s", "-1/second", "0/second", "1e3/second", "50/second;1/hour"],
)
def test_a_malformed_send_rate_is_refused_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv("SEND_RATE", value)
    with pytest.raises(ConfigError) as info:
        load_settings(_env_file=None)
    assert str(info.value).startswith("SEND_RATE:") and "\n" not in str(info.value)


def test_a_negative_max_wait_is_refused(monkeypatch):
    monkeypatch.setenv("PACING_MAX_WAIT_SECONDS", "-1")
    with pytest.raises(ConfigError) as info:
        load_settings(_env_file=None)
    assert str(info.value).startswith("PACING_MAX_WAIT_SECONDS:")


def test_rate_zero_builds_no_pacer():
    assert Pacer.build(0.0, workers=1, store=LimitStore("memory://")) is None


def test_memory_storage_paces_each_worker_at_its_share():
    pacer = Pacer.build(50.0, workers=4, store=LimitStore("memory://"))
    assert pacer is not None and pacer.redis is None
    assert pacer.local.rate == Rate.per_second(12.5)


async def test_take_sleeps_until_the_slot_or_refuses_with_retry_after():
    clock, slept, waits, refusals = FakeClock(), [], [], []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    pacer = Pacer(
        MemoryGcra(Rate.per_second(2), clock),
        on_wait=waits.append,
        on_refuse=lambda: refusals.append(1),
        sleep=sleep,
    )
    for _ in range(3):
        await pacer.take(1.0)
    assert slept == [0.5] and waits == [0, 0, 0.5]  # no sleep at all within the burst
    with pytest.raises(SendRateExceeded) as info:
        await pacer.take(0.9)  # the next slot is 1.0 s away
    assert info.value.status == 503 and info.value.code == "send_rate_exceeded"
    assert info.value.headers == {"Retry-After": "1"}
    clock.now -= 2.5  # (a slot 3.5 s away) whole seconds, rounded up
    with pytest.raises(SendRateExceeded) as info:
        await pacer.take(0.9)
    assert info.value.headers == {"Retry-After": "4"}
    assert refusals == [1, 1] and slept == [0.5]


# The Redis script, on the real Redis ---------------------------------------------------
async def test_redis_script_answers_delays_from_redis_clock(redis_url):
    pacer = RedisGcra(redis_url, Rate.per_second(5))
    try:
        started = time.monotonic()
        delays = [(await pacer.reserve(None)).delay for _ in range(7)]
        took = time.monotonic() - started
    finally:
        await pacer.aclose()
    assert delays[:5] == [0, 0, 0, 0, 0]
    # Redis' clock moved on between the calls, by at most what they took here (a loaded
    # machine stretches that): a little less than 0.2 and 0.4.
    slack = took + 0.005
    assert 0.2 - slack < delays[5] <= 0.2 and 0.4 - slack < delays[6] <= 0.4, (delays, took)


async def test_redis_refusal_holds_no_slot(redis_url):
    pacer = RedisGcra(redis_url, Rate.per_second(1))
    plain = redis.Redis.from_url(redis_url)
    try:
        assert (await pacer.reserve(0)).granted
        state = plain.get(REDIS_KEY)
        for _ in range(3):
            refused = await pacer.reserve(0.5)
            assert not refused.granted and 0.9 < refused.delay <= 1.0
        assert plain.get(REDIS_KEY) == state  # nothing written by a refusal
        taken = await pacer.reserve(None)
        assert taken.granted and 0.9 < taken.delay <= 1.0  # the next slot, not the 4th
        assert 0 < plain.pttl(REDIS_KEY) <= 2001  # expires once its time has passed
    finally:
        await pacer.aclose()
        plain.close()


async def test_two_processes_share_one_rate_on_redis(redis_url):
    """Two separate clients (as two replicas would have): one burst, one queue."""
    first = RedisGcra(redis_url, Rate.per_second(4))
    second = RedisGcra(redis_url, Rate.per_second(4))
    try:
        answers = []
        for pacer in (first, second, first, second, first, second):
            answers.append(await pacer.reserve(None))
    finally:
        await first.aclose()
        await second.aclose()
    delays = [a.delay for a in answers]
    assert delays[:4] == [0, 0, 0, 0]
    # One queue: the 5th and 6th wait one and two intervals (0.25 s each) after the burst,
    # less the time the calls themselves took (Redis' clock runs on between them). Two
    # separate rates would have let both through at once.
    assert 0 < delays[4] <= 0.25 and 0 < delays[5] <= 0.5
    assert delays[5] - delays[4] > 0.15


# Over HTTP -------------------------------------------------------------------------------
def paced(settings_factory, **overrides):
    values = {"send_rate": "2/second", "pacing_max_wait_seconds": 0}
    return settings_factory(**{**values, **overrides})


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in the metrics")


async def test_a_burst_beyond_the_rate_is_refused_before_plivo(
    settings_factory, client_for, fake_plivo
):
    async with client_for(paced(settings_factory)) as client:
        assert [(await client.post(SEND, json=VALID)).status_code for _ in range(2)] == [200, 200]
        refused = await client.post(SEND, json=VALID)
        metrics = (await client.get("/metrics")).text
    assert refused.status_code == 503
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.headers["retry-after"] == "1"  # the next slot is 0.5 s away
    body = refused.json()
    assert body["code"] == "send_rate_exceeded" and body["status"] == 503
    assert len(fake_plivo.sends()) == 2  # no POST for the refused one
    assert metric(metrics, "mms_pacing_refusals_total") == 1
    assert metric(metrics, "mms_pacing_wait_seconds_count") == 2
    assert metric(metrics, 'mms_sends_total{code="send_rate_exceeded"}') == 1


async def test_a_refused_send_leaves_its_idempotency_key_free(
    settings_factory, client_for, fake_plivo
):
    keyed = {"Idempotency-Key": "pace-1"}
    async with client_for(paced(settings_factory)) as client:
        for _ in range(2):
            assert (await client.post(SEND, json=VALID)).status_code == 200
        refused = await client.post(SEND, json=VALID, headers=keyed)
        assert refused.json()["code"] == "send_rate_exceeded"
        await asyncio.sleep(0.6)  # one slot (0.5 s) is free again
        retried = await client.post(SEND, json=VALID, headers=keyed)
        listed = (await client.get("/api/mms", params={"idempotencyKey": "pace-1"})).json()
    assert retried.status_code == 200 and "idempotent-replayed" not in retried.headers
    assert len(fake_plivo.sends()) == 3
    assert [m["status"] for m in listed["items"]] == ["queued"]


async def test_a_refused_send_counts_against_no_limit_or_quota(
    settings_factory, client_for, fake_plivo
):
    """Limit 2 per destination and quota 2 per key: a refused send in between would have
    used up both, and the third send would be refused by them."""
    settings = paced(
        settings_factory,
        send_rate="1/second",
        rate_limit_per_destination="2/hour",
        daily_quota_per_key=2,
        api_keys=API_KEYS,
    )
    auth = {"X-API-Key": KEY_A}
    async with client_for(settings) as client:
        assert (await client.post(SEND, json=VALID, headers=auth)).status_code == 200
        refused = await client.post(SEND, json=VALID, headers=auth)
        assert refused.json()["code"] == "send_rate_exceeded"
        await asyncio.sleep(1.05)
        assert (await client.post(SEND, json=VALID, headers=auth)).status_code == 200
        await asyncio.sleep(1.05)
        spent = await client.post(SEND, json=VALID, headers=auth)
    assert spent.json()["code"] == "destination_rate_limited"  # the limits are in force
    assert len(fake_plivo.sends()) == 2


async def test_sends_beyond_the_burst_wait_for_their_slots(
    settings_factory, client_for, fake_plivo
):
    """5/second, 10 at once: 5 go at once, the others follow at 0.2 s intervals."""
    settings = settings_factory(send_rate="5/second", pacing_max_wait_seconds=2)
    async with client_for(settings) as client:
        started = time.monotonic()
        responses = await asyncio.gather(*(client.post(SEND, json=VALID) for _ in range(10)))
        elapsed = time.monotonic() - started
        metrics = (await client.get("/metrics")).text
    assert [r.status_code for r in responses] == [200] * 10
    assert 0.9 <= elapsed < 3.0
    posts = sorted(call.at for call in fake_plivo.sends())
    # Plivo saw them spread out, not all at once: the slots span 1.0 s, and on a loaded
    # machine a post can reach the fake a few hundred ms after its slot.
    assert posts[-1] - posts[0] >= 0.5
    assert metric(metrics, "mms_pacing_wait_seconds_count") == 10
    assert metric(metrics, 'mms_pacing_wait_seconds_bucket{le="0.0"}') >= 5
    # 0.2 + 0.4 + ... + 1.0 = 3.0 if all asked at once; less as they trickle in.
    assert 1.5 <= metric(metrics, "mms_pacing_wait_seconds_sum") <= 3.05


async def test_a_key_waiting_for_its_slot_is_not_taken_for_orphaned(
    settings_factory, client_for, fake_plivo, monkeypatch
):
    """The key's lease covers the pacing wait: a send waiting 4 s for its slot (longer than
    deadline + grace + margin alone, 1 s here) is still in flight, never a stored 504."""
    from app.store import idempotency

    monkeypatch.setattr(idempotency, "SLOT_AND_MARGIN_SECONDS", 0.5)  # 5 s in service
    settings = settings_factory(
        send_rate="15/minute",
        pacing_max_wait_seconds=5,
        plivo_timeout_seconds=0.5,
        shutdown_grace_seconds=0,
    )
    keyed = {"Idempotency-Key": "slow"}
    async with client_for(settings) as client:
        assert (await client.post(SEND, json=VALID)).status_code == 200
        waiting = asyncio.create_task(client.post(SEND, json=VALID, headers=keyed))
        await asyncio.sleep(1.5)  # past 0.5 s + 0 s + the 0.5 s margin; its slot is at 4 s
        again = await client.post(SEND, json=VALID, headers=keyed)
        first = await waiting
    assert again.status_code == 409 and again.json()["code"] == "idempotency_in_progress"
    assert first.status_code == 200
    assert len(fake_plivo.sends()) == 2


async def test_send_rate_zero_turns_pacing_off(settings_factory, client_for, fake_plivo):
    settings = paced(settings_factory, send_rate="0")
    async with client_for(settings) as client:
        assert client.services.pacer is None
        responses = await asyncio.gather(*(client.post(SEND, json=VALID) for _ in range(10)))
    assert [r.status_code for r in responses] == [200] * 10


async def test_two_app_instances_on_one_redis_share_the_rate(
    settings_factory, client_for, redis_url, tmp_path, fake_plivo
):
    """Each alone would allow 2 at once; together they allow 2, fleet-wide."""
    first = paced(settings_factory, rate_limit_storage_url=redis_url)
    second = paced(
        settings_factory,
        rate_limit_storage_url=redis_url,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/second.db",
    )
    async with client_for(first) as a, client_for(second) as b:
        assert (await a.post(SEND, json=VALID)).status_code == 200
        assert (await b.post(SEND, json=VALID)).status_code == 200
        from_a, from_b = await a.post(SEND, json=VALID), await b.post(SEND, json=VALID)
    assert from_a.json()["code"] == from_b.json()["code"] == "send_rate_exceeded"
    assert len(fake_plivo.sends()) == 2


async def test_redis_down_falls_back_to_pacing_per_process(
    settings_factory, client_for, fake_plivo
):
    url = f"redis://127.0.0.1:{free_port()}/0"
    async with client_for(paced(settings_factory, rate_limit_storage_url=url)) as client:
        assert [(await client.post(SEND, json=VALID)).status_code for _ in range(2)] == [200, 200]
        refused = await client.post(SEND, json=VALID)
        ready = await client.get("/ready")
    assert refused.json()["code"] == "send_rate_exceeded"
    assert ready.status_code == 200 and "rate_limit_storage" in ready.json()["degraded"]
    assert len(fake_plivo.sends()) == 2


def test_a_production_start_on_the_default_rate_warns(settings_factory, capsys):
    from app.main import create_app

    async def start_and_stop(settings):
        from asgi_lifespan import LifespanManager

        async with LifespanManager(create_app(settings), startup_timeout=30):
            pass

    production = {"app_env": "production", "api_keys": API_KEYS, "log_level": "warning"}
    asyncio.run(start_and_stop(settings_factory(**production)))
    assert "SEND_RATE is the default" in capsys.readouterr().out
    asyncio.run(start_and_stop(settings_factory(**production, send_rate="0.25/second")))
    assert "SEND_RATE" not in capsys.readouterr().out


# The outbox's reservation --------------------------------------------------------------------
async def test_reserve_shared_grants_only_within_its_limit_and_records_the_wait():
    clock, waits = FakeClock(), []
    pacer = Pacer(MemoryGcra(Rate.per_second(2), clock), on_wait=waits.append)
    granted = [await pacer.reserve_shared(0.5) for _ in range(3)]
    assert [(r.granted, r.delay) for r in granted if r] == [(True, 0), (True, 0), (True, 0.5)]
    refused = await pacer.reserve_shared(0.5)
    assert refused is not None and not refused.granted and refused.delay == 1.0
    assert waits == [0, 0, 0.5]  # a refusal holds no slot and records no wait
    clock.now += 1.0
    again = await pacer.reserve_shared(0.5)
    assert again is not None and again.granted and again.delay == 0.0


async def test_reserve_shared_is_none_while_redis_is_down_never_per_process():
    store = LimitStore(f"redis://127.0.0.1:{free_port()}/0")
    pacer = Pacer.build(50.0, workers=1, store=store)
    assert pacer is not None and pacer.redis is not None
    assert await pacer.reserve_shared(1.0) is None
    assert pacer.local.reserve(1.0).granted  # synchronous sends would still fall back
    await pacer.aclose()


async def test_reserve_shared_on_redis_is_the_fleet_pace(redis_url):
    first = Pacer.build(2.0, workers=1, store=LimitStore(redis_url))
    second = Pacer.build(2.0, workers=1, store=LimitStore(redis_url))
    assert first is not None and second is not None
    answers = [await p.reserve_shared(0.4) for p in (first, second, first, second)]
    assert [a.granted for a in answers if a] == [True, True, False, False]
    for pacer in (first, second):
        await pacer.aclose()
