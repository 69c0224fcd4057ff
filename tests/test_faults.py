"""Fault injection against the real server (`python -m app`) and the fake Plivo on loopback.

Assertions are on the fake's call counters and on what callers see; time bounds are
generous — no test here fails because the machine is slow.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time

import httpx
import pytest

from tests import fakeplivo as fp
from tests.helpers import API_KEYS, KEY_A, keyed, wait_for
from tests.helpers import post_send as post
from tests.loopback import http_get

pytestmark = pytest.mark.e2e
A = {"X-API-Key": KEY_A}


def two_servers(server_factory, **settings):
    """Two `python -m app` on one SQLite file, started side by side: the second stands for
    the restarted service, up before the first is stopped (a restart after it would only add
    a start's seconds, and on a loaded machine a start can outlast a key's lease)."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first, second = pool.map(lambda _: server_factory(**settings), range(2))
    return first, second


def test_fifty_concurrent_one_key_one_call_and_replays_survive_restarts(server_factory, fake_plivo):
    """50 at once with one key: one Plivo call; replays from the restarted service (after
    the first one has exited) make no new call."""
    fake_plivo.set_default(fp.ok(delay=0.5))
    server, restarted = two_servers(server_factory, API_KEYS=API_KEYS)
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        responses = list(pool.map(lambda _: post(server, headers=keyed("k-50")), range(50)))
    fresh = [
        r for r in responses if r.status_code == 200 and "idempotent-replayed" not in r.headers
    ]
    others = [r for r in responses if r not in fresh]
    assert len(fresh) == 1  # the one that went to Plivo; the rest were held off or replayed
    assert all(
        r.status_code == 409 or r.headers.get("idempotent-replayed") == "true" for r in others
    )
    assert len(fake_plivo.sends()) == 1
    original = fresh[0].json()
    assert server.terminate() == 0
    replay = post(restarted, headers=keyed("k-50"))
    assert replay.status_code == 200 and replay.json() == original
    assert replay.headers["idempotent-replayed"] == "true"
    assert len(fake_plivo.sends()) == 1


@pytest.mark.slow
def test_kill_9_mid_send_then_restart_makes_no_new_call(server_factory, fake_plivo):
    """A key orphaned by a crash is 409 during its lease, then a stored unknown outcome (504)."""
    settings = {
        "API_KEYS": API_KEYS,
        "PLIVO_TIMEOUT_SECONDS": 1,
        "SHUTDOWN_GRACE_SECONDS": 0,
        "PACING_MAX_WAIT_SECONDS": 0,  # the lease also covers the longest pacing wait
    }
    lease_seconds = 1 + 0 + 5  # deadline + grace + the 5 s margin
    fake_plivo.set_default(fp.hang())
    server, restarted = two_servers(server_factory, **settings)
    in_flight = threading.Thread(
        target=lambda: _ignore(lambda: post(server, headers=keyed("crash")))
    )
    in_flight.start()
    wait_for(lambda: len(fake_plivo.sends()) == 1)
    key_taken = time.monotonic()  # (just before) the send reached Plivo
    server.proc.kill()  # SIGKILL mid-send: nothing recorded the outcome
    server.proc.wait(10)
    in_flight.join(30)
    fake_plivo.set_default(fp.ok())
    early = post(restarted, headers=keyed("crash"))
    assert time.monotonic() - key_taken < lease_seconds, "the test outlasted the lease"
    assert early.status_code == 409 and early.json()["code"] == "idempotency_in_progress"
    time.sleep(max(0.0, key_taken + lease_seconds + 0.5 - time.monotonic()))
    late = post(restarted, headers=keyed("crash"))
    assert late.status_code == 504 and late.json()["code"] == "upstream_timeout"
    assert late.headers["idempotent-replayed"] == "true"
    assert len(fake_plivo.sends()) == 1
    listed = http_get(
        f"{restarted.url}/api/mms", params={"idempotencyKey": "crash"}, headers=A
    ).json()
    assert [m["status"] for m in listed["items"]] == ["unknown"]


def test_breaker_opens_answers_without_plivo_one_trial_closes(server_factory, fake_plivo):
    server = server_factory(CIRCUIT_FAILURE_THRESHOLD=3, CIRCUIT_RESET_SECONDS=2)
    fake_plivo.set_default(fp.status(500))
    assert [post(server).status_code for _ in range(3)] == [502, 502, 502]
    assert len(fake_plivo.sends()) == 3
    opened = post(server)
    assert opened.status_code == 503 and opened.json()["code"] == "upstream_unavailable"
    assert 1 <= int(opened.headers["retry-after"]) <= 2
    assert len(fake_plivo.sends()) == 3  # answered without touching Plivo
    ready = http_get(f"{server.url}/ready").json()
    assert ready["degraded"] == ["circuit_open"]
    time.sleep(2.2)
    fake_plivo.set_default(fp.ok(delay=1.0))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        trial = list(pool.map(lambda _: post(server), range(4)))
    assert sorted(r.status_code for r in trial) == [200, 503, 503, 503]
    assert len(fake_plivo.sends()) == 4  # exactly one trial reached Plivo
    fake_plivo.set_default(fp.ok())
    assert post(server).status_code == 200  # closed again
    assert http_get(f"{server.url}/ready").json()["degraded"] == []


def test_sigterm_during_a_slow_send_lets_it_finish(server_factory, fake_plivo):
    fake_plivo.set_default(fp.ok(delay=2.0))
    server = server_factory(SHUTDOWN_GRACE_SECONDS=10)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(post, server)
        wait_for(lambda: fake_plivo.in_flight == 1)
        started = time.monotonic()
        server.proc.send_signal(15)
        response = pending.result()
        code = server.proc.wait(30)
    assert response.status_code == 200
    assert code == 0 and time.monotonic() - started < 10
    assert '"draining"' in server.logs()


def _ignore(call):
    with contextlib.suppress(httpx.HTTPError):
        call()
