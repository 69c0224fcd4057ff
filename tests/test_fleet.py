"""Fleet tests: compose.yaml's replicas behind its nginx.conf act as one service.

Run on loopback by tests/fleet.py (fixtures `fleet` / `start_fleet`): every request goes
through nginx from 127.0.0.2, an untrusted client address; limits live in the machine's Redis.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import re
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest

from tests.fleet import RedisServer, require
from tests.helpers import KEY_A, VALID, psql
from tests.server import free_port

# One fleet at a time (fixed ports): under pytest-xdist, all fleet tests on one worker.
# A test asking for the settings of the test before it reuses its fleet (tests/fleet.py
# `Fleets`), so tests with the same settings stand next to each other, and the one that
# kills a replica comes last among compose's own settings.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("fleet")]

AUTH = {"Authorization": f"Bearer {KEY_A}"}
_numbers = itertools.count(2000)


def message() -> dict[str, object]:
    """A valid send to a new number each time (RATE_LIMIT_PER_DESTINATION stays out of it)."""
    return {**VALID, "to": f"+1415555{next(_numbers):04d}"}


def send(http, n: int, **headers: str) -> list[tuple[int, str | None]]:
    """`n` sends, one after the other: [(status, problem code or None)]."""
    results = []
    for _ in range(n):
        response = http.post("/api/mms/send", json=message(), headers={**AUTH, **headers})
        code = response.json().get("code") if response.status_code != 200 else None
        results.append((response.status_code, code))
    return results


def test_the_fleet_tests_run_on_one_worker(request):
    """`make test` runs several workers with `--dist loadgroup`: the fleet's tests (fixed ports,
    one fleet lock) must all run on one of them. xdist marks a group's tests by a node-id
    suffix; with a pytest that ignores it (9.2) the fleet was spread over both workers and
    each waited minutes for the other's lock. This fails when that happens again."""
    if getattr(request.config.option, "loadgroup", False):  # set by xdist's --dist loadgroup
        assert request.node.nodeid.endswith("@fleet"), "see the pytest pin in pyproject.toml"


# The outbox: one pace toward Plivo for the fleet, each scheduled message sent once. These two
# are the group's longest tests, so they come first: xdist gives a worker more tests once two
# of its own are left, and those would otherwise wait behind them. The 504 test between them
# shares their fleet (the same Plivo deadline), before the kill test restarts a replica.
OUTBOX_SENDS = 500
OUTBOX_RATE = 50  # per second: 500 sends take 10 s (9 s after the first second's burst)
# All are accepted first (send_at this far ahead: acceptance must end two seconds before
# the drain, and a loaded machine accepts several times slower than a quiet one), then
# drained together.
ACCEPT_SECONDS = 8


def _accept_async(fleet, count: int, *, due_together: bool = True) -> dict[str, str]:
    """`count` respond-async sends through nginx, concurrently: text -> id. With
    `due_together`, all are due at one moment ACCEPT_SECONDS ahead (so the drain, not the
    acceptance, is measured); otherwise each is due when accepted."""
    due = {}
    if due_together:
        due["send_at"] = (datetime.now(UTC) + timedelta(seconds=ACCEPT_SECONDS)).isoformat()
    bodies = [{**message(), "text": f"outbox {i}", **due} for i in range(count)]
    headers = {**AUTH, "Prefer": "respond-async"}

    def post(chunk):
        ids = {}
        with fleet.client() as http:
            for body in chunk:
                response = http.post("/api/mms/send", json=body, headers=headers)
                assert response.status_code == 202, response.text
                ids[body["text"]] = response.json()["id"]
        return ids

    chunks = [bodies[i::16] for i in range(16)]
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(chunks)) as pool:
        ids = {t: i for found in pool.map(post, chunks) for t, i in found.items()}
    took = time.monotonic() - started
    print(f"outbox accept: {count} in {took:.1f} s ({count / took:.0f}/s)")
    if due_together:
        assert took < ACCEPT_SECONDS - 2, f"accepting took {took:.1f} s: the drain began before"
    assert len(set(ids.values())) == count
    return ids


def _posts_per_text(fleet) -> dict[str, int]:
    counts: dict[str, int] = {}
    for call in fleet.fake.sends():
        counts[call.json["text"]] = counts.get(call.json["text"], 0) + 1
    return counts


def _wait_sent(fleet, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(_posts_per_text(fleet)) < count and time.monotonic() < deadline:
        time.sleep(0.2)


def _outbox_fleet(start_fleet):
    # A 3-s Plivo deadline (the fake answers at once) shortens the outbox lease, which the
    # kill test waits out, by 7 s.
    return start_fleet(
        SEND_RATE=f"{OUTBOX_RATE}/second", RATE_LIMIT="100000/minute", PLIVO_TIMEOUT_SECONDS=3
    )


def test_outbox_backlog_drains_at_send_rate_across_replicas_once_each(start_fleet):
    """500 respond-async sends over both replicas drain at SEND_RATE=50/s (9 s: 8.5 to 10.5 s),
    each sent exactly once, by both replicas."""
    fleet = _outbox_fleet(start_fleet)
    marks = fleet.marks()
    _accept_async(fleet, OUTBOX_SENDS)
    _wait_sent(fleet, OUTBOX_SENDS, timeout=ACCEPT_SECONDS + 60)
    counts = _posts_per_text(fleet)
    assert len(counts) == OUTBOX_SENDS and set(counts.values()) == {1}
    times = sorted(call.at for call in fleet.fake.sends())
    drained = times[-1] - times[0]
    print(
        f"outbox drain: {OUTBOX_SENDS} sends in {drained:.2f} s "
        f"({(OUTBOX_SENDS - 1) / drained:.1f}/s, SEND_RATE {OUTBOX_RATE}/s)"
    )
    assert 8.5 <= drained <= 10.5, drained

    def by_replica() -> list[int]:
        return [
            len(r.events("outbox_send", since))
            for r, since in zip(fleet.replicas, marks, strict=True)
        ]

    # A replica logs its send just after recording it: the last line may still be coming.
    deadline = time.monotonic() + 10
    while sum(by_replica()) < OUTBOX_SENDS and time.monotonic() < deadline:
        time.sleep(0.2)
    sends = by_replica()
    assert all(n > 0 for n in sends) and sum(sends) == OUTBOX_SENDS, sends


def test_a_slow_send_gets_the_apps_504_not_nginxs(start_fleet):
    """Plivo silent for the whole PLIVO_TIMEOUT_SECONDS: the app's 504 reaches the caller
    through nginx, not nginx's own 504 (its proxy_read_timeout is longer). The deadline is
    3 s here rather than compose.yaml's 10 s only to keep the test short; the fleet is the
    outbox tests' (the same deadline), so it is not started again."""
    from tests.fakeplivo import hang

    fleet = _outbox_fleet(start_fleet)
    fleet.fake.script(hang())
    with fleet.client() as http:
        response = http.post("/api/mms/send", json=message(), headers=AUTH)
    assert response.status_code == 504
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "upstream_timeout"
    assert len(fleet.fake.sends()) == 1


def test_outbox_loses_nothing_when_a_replica_is_killed_halfway(start_fleet):
    """SIGKILL one replica halfway through the drain, restart it: no message is sent twice,
    and none is lost -- each is sent exactly once, except one the dead replica had marked
    as being sent whose POST never arrived: that one is an unknown outcome for
    reconciliation (the invariant: never risk a second send), not a lost message. One it
    had only claimed is taken again once its lease runs out."""
    fleet = _outbox_fleet(start_fleet)
    # Due at once: the drain (10 s) starts while the rest are accepted (a few seconds).
    ids = _accept_async(fleet, OUTBOX_SENDS, due_together=False)
    deadline = time.monotonic() + 60
    while len(fleet.fake.sends()) < OUTBOX_SENDS // 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    victim = fleet.replicas[0]
    victim.server.kill()  # SIGKILL, by PID, mid-drain
    killed_at = len(fleet.fake.sends())
    victim.restart()
    # The dead replica's claims run out (the outbox lease: under a minute), then are sent.
    schema = fleet.schema  # a reused fleet's, not this test's postgres_url

    def statuses() -> dict[str, tuple[str, bool]]:
        rows = psql(
            f"SELECT id, status, attempt_started_at IS NOT NULL FROM {schema}.messages"
        ).split()
        return {r.split("|")[0]: (r.split("|")[1], r.split("|")[2] == "t") for r in rows}

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        states = statuses()
        if all(status != "scheduled" for status, _ in states.values()):
            break
        time.sleep(0.5)
    counts = _posts_per_text(fleet)
    unsent = {text: states[ids[text]] for text in ids if text not in counts}
    print(
        f"outbox kill: killed after {killed_at} sends; {len(counts)} sent once, "
        f"max POSTs per message {max(counts.values())}, not sent: {unsent}"
    )
    assert set(counts.values()) == {1}  # never twice
    # Sent: queued, or (its POST in flight when the replica died) an unknown outcome that
    # reconciliation settles -- never sent again.
    sent_states = {states[ids[text]] for text in counts}
    assert sent_states <= {("queued", True), ("unknown", True)}, sent_states
    # Not lost: interrupted between its mark and its POST, it is an unknown outcome.
    assert all(state == ("unknown", True) for state in unsent.values()), unsent
    assert len(unsent) <= 5, unsent


def served(fleet) -> list[int]:
    """Sends each replica served, counted in the replicas' own logs."""
    return [len(replica.sends()) for replica in fleet.replicas]


def test_rate_limit_is_one_limit_per_real_client_across_replicas(start_fleet):
    """RATE_LIMIT=5/minute via Redis: 5 of 12 sends pass over both replicas; another client has its own 5."""
    fleet = start_fleet(RATE_LIMIT="5/minute")
    with fleet.client() as http:
        results = send(http, 12)
    assert results.count((200, None)) == 5, results
    assert results.count((429, "rate_limited")) == 7, results
    assert all(count > 0 for count in served(fleet)), served(fleet)
    assert len(fleet.fake.sends()) == 5
    # The limit is keyed on the client nginx saw, not on nginx: the replicas trust nginx's
    # X-Forwarded-For (FORWARDED_ALLOW_IPS = nginx's address), so a second client is not refused.
    with fleet.client(source="127.0.0.3") as other:
        assert send(other, 2) == [(200, None)] * 2


def test_spoofed_x_forwarded_for_does_not_dodge_the_limit(start_fleet):
    """A client's own X-Forwarded-For (a new one each time) is ignored: still exactly 5 of 12 pass."""
    fleet = start_fleet(RATE_LIMIT="5/minute")
    with fleet.client() as http:
        results = [send(http, 1, **{"X-Forwarded-For": f"203.0.113.{i}"})[0] for i in range(9, 21)]
    assert results.count((200, None)) == 5, results
    assert results.count((429, "rate_limited")) == 7, results


def test_daily_quota_is_shared_across_replicas(start_fleet):
    """DAILY_QUOTA_PER_KEY=3: exactly 3 of 8 sends pass across replicas, then 429 quota_exceeded."""
    fleet = start_fleet(DAILY_QUOTA_PER_KEY=3)
    with fleet.client() as http:
        results = send(http, 8)
    assert results[:3] == [(200, None)] * 3, results
    assert results[3:] == [(429, "quota_exceeded")] * 5, results
    assert all(count > 0 for count in served(fleet)), served(fleet)
    assert len(fleet.fake.sends()) == 3


def logged_by_all(fleet, event: str, marks: list[int]) -> bool:
    """Has every replica logged `event` since `marks`?"""
    return all(r.events(event, since=m) for r, m in zip(fleet.replicas, marks, strict=True))


def test_redis_outage_falls_back_per_replica_and_recovers(start_fleet, tmp_path):
    """Redis stopped mid-run: sends go on, each replica counting alone; restarted: shared again."""
    require(shutil.which("redis-server") is not None, "redis-server not installed")
    limit = 5
    private = RedisServer(tmp_path / "redis", free_port()).start()
    try:
        fleet = start_fleet(RATE_LIMIT=f"{limit}/minute", redis_port=private.port)
        replicas = len(fleet.replicas)
        with fleet.client() as http:
            assert send(http, 2) == [(200, None)] * 2  # counted in Redis

            private.stop()  # by PID
            marks = fleet.marks()
            results = send(http, 3 * limit)
            # Each replica now counts alone, from zero: up to `limit` each (round robin gives
            # every replica at least `limit` of these 15), so limit x replicas pass.
            assert results.count((200, None)) == limit * replicas, results
            assert results.count((429, "rate_limited")) == 3 * limit - limit * replicas
            assert logged_by_all(fleet, "rate_limit_storage_down", marks)

            marks = fleet.marks()
            private.start()  # same port: the replicas' URL still points at it
            # A replica tries Redis again 5 s after its last failure, on its next request
            # (any request to the send route, even a refused one, makes it try).
            deadline = time.monotonic() + 15
            while not logged_by_all(fleet, "rate_limit_storage_recovered", marks):
                assert time.monotonic() < deadline, [r.logs()[-2000:] for r in fleet.replicas]
                http.post("/api/mms/send", json={}, headers=AUTH)
                time.sleep(0.25)

        with fleet.client(source="127.0.0.3") as fresh:  # a client Redis has not seen yet
            results = send(fresh, 3 * limit)
        assert results.count((200, None)) == limit, results  # one shared limit again
    finally:
        private.stop()


def test_nginx_passes_request_id_and_lets_the_app_answer_413(fleet):
    """Through nginx: X-Request-ID goes both ways (nginx makes one if absent); >64 KiB is the app's 413."""
    with fleet.client() as http:
        response = http.post(
            "/api/mms/send", json=message(), headers={**AUTH, "X-Request-ID": "abc-123"}
        )
        assert response.status_code == 200, response.text
        assert response.headers["X-Request-ID"] == "abc-123"
        generated = http.get("/health").headers["X-Request-ID"]
        assert re.fullmatch(r"[0-9a-f]{32}", generated)  # nginx's $request_id...
        # ...and the id in nginx's access line (written just after the response: poll)
        deadline = time.monotonic() + 10
        while f"rid={generated}" not in fleet.nginx.logs() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert f"rid={generated}" in fleet.nginx.logs()

        big = http.post(
            "/api/mms/send",
            content=b'{"text": "' + b"x" * (100 * 1024) + b'"}',
            headers={**AUTH, "Content-Type": "application/json"},
        )
    assert big.status_code == 413
    assert big.headers["Content-Type"] == "application/problem+json"
    assert big.json()["code"] == "payload_too_large"


# Shared state on PostgreSQL: one idempotency record, one status history, one reconciliation.


def test_one_idempotency_key_sent_to_every_replica_at_once_is_one_plivo_call(start_fleet):
    """The same key, at once, directly to each replica and through nginx: exactly one send."""
    from tests import fakeplivo as fp

    fleet = start_fleet()
    fleet.fake.set_default(fp.ok(delay=1.0))
    body = message()
    headers = {**AUTH, "Idempotency-Key": "fleet-key-1"}
    targets = [r.url for r in fleet.replicas] * 3 + [fleet.url] * 4

    def post(url):
        with fleet.client() if url == fleet.url else _direct(url) as http:
            return http.post("/api/mms/send", json=body, headers=headers)

    with concurrent.futures.ThreadPoolExecutor(len(targets)) as pool:
        responses = list(pool.map(post, targets))
    fresh = [
        r for r in responses if r.status_code == 200 and "idempotent-replayed" not in r.headers
    ]
    assert len(fresh) == 1, [
        (r.status_code, r.headers.get("idempotent-replayed")) for r in responses
    ]
    assert all(r.status_code in (200, 409) for r in responses)
    assert len(fleet.fake.sends()) == 1
    fleet.fake.set_default(fp.ok())
    for replica in fleet.replicas:  # every replica replays the one stored response
        with _direct(replica.url) as http:
            replay = http.post("/api/mms/send", json=body, headers=headers)
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.json() == fresh[0].json()
    assert len(fleet.fake.sends()) == 1


def test_callback_through_replica_a_is_read_on_replica_b(start_fleet):
    """A delivery report stored by one replica is what every replica answers."""
    from tests.signing import FORM, form, v3_headers

    fleet = start_fleet()
    a, b = fleet.replicas[0], fleet.replicas[1]
    with fleet.client() as http:
        message_uuid = http.post("/api/mms/send", json=message(), headers=AUTH).json()[
            "messageUuid"
        ][0]
    params = {"MessageUUID": message_uuid, "Status": "delivered", "Sequence": "3"}
    # Plivo signs the public URL (compose's PUBLIC_BASE_URL = nginx), whoever receives it.
    headers = {**FORM, **v3_headers("http://nginx:8080/api/mms/status", params)}
    with _direct(a.url) as http:
        assert (
            http.post("/api/mms/status", content=form(params), headers=headers).status_code == 200
        )
    with _direct(b.url) as http:
        seen = http.get(f"/api/mms/{message_uuid}", headers=AUTH).json()
    assert seen["status"] == "delivered"
    assert [e["status"] for e in seen["events"]] == ["delivered"]


def _replica_that_sent(fleet, call):
    """The replica whose connection carried `call` (a request the fake Plivo holds open),
    found with `ss`: both replicas may hold keep-alive connections to the fake."""
    query = f"( dport = :{fleet.fake.port} and sport = :{call.client_port} )"
    out = subprocess.run(
        ["ss", "-Htnp", "state", "established", query],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    pids = {int(pid) for pid in re.findall(r"pid=(\d+)", out)}
    found = [r for r in fleet.replicas if r.pid in pids]
    assert len(found) == 1, out
    return found[0]


def test_a_post_that_reached_a_replica_is_never_sent_to_another(fleet):
    """A replica dies holding a send: the caller gets 502, no second send; later sends use the survivor."""
    from tests.fakeplivo import hang

    fleet.fake.script(hang())  # the first send waits at "Plivo"
    with fleet.client() as http, concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(http.post, "/api/mms/send", json=message(), headers=AUTH)
        deadline = time.monotonic() + 10
        while not fleet.fake.sends() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(fleet.fake.sends()) == 1
        holder = _replica_that_sent(fleet, fleet.fake.sends()[0])
        holder.server.kill()  # by PID, with the POST in flight
        response = pending.result(timeout=15)
    assert response.status_code == 502  # nginx's own: the send may have reached Plivo
    assert len(fleet.fake.sends()) == 1  # ...so it was not passed to the other replica

    with fleet.client() as http:  # connect refused -> the other replica (nothing was sent)
        assert send(http, 4) == [(200, None)] * 4
    assert len(fleet.fake.sends()) == 5


def test_each_stale_message_is_reconciled_once_fleet_wide(start_fleet):
    """Both replicas reconcile; each message is looked up exactly once (FOR UPDATE SKIP LOCKED)."""
    fleet = start_fleet(RECONCILE_AFTER_SECONDS=2, RECONCILE_RATE=20)
    with fleet.client() as http:
        uuids = [
            http.post("/api/mms/send", json=message(), headers=AUTH).json()["messageUuid"][0]
            for _ in range(12)
        ]
    for message_uuid in uuids:  # delivered at Plivo: one lookup settles each message
        fleet.fake.mdrs[message_uuid].message_state = "delivered"

    def all_delivered():
        with fleet.client() as http:
            return all(
                http.get(f"/api/mms/{u}", headers=AUTH).json()["status"] == "delivered"
                for u in uuids
            )

    deadline = time.monotonic() + 60
    while not all_delivered():
        assert time.monotonic() < deadline, "reconciliation did not finish"
        time.sleep(0.5)
    time.sleep(3)  # nothing more to look up: no late second lookups either
    lookups = [c.path for c in fleet.fake.lookups()]
    assert sorted(lookups) == sorted(
        f"/v1/Account/{fleet.fake.auth_id}/Message/{u}/" for u in uuids
    )
    # The replicas' own counters agree: together they made exactly one lookup per message.
    assert sum(_found_lookups(r.url) for r in fleet.replicas) == len(uuids)


def _found_lookups(url):
    from prometheus_client.parser import text_string_to_metric_families

    with _direct(url) as http:
        text = http.get("/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "mms_reconcile_lookups_total" and sample.labels.get("result") == "found"
    )


def _direct(url):
    """A client straight to one replica (bypassing nginx), from the untrusted address."""
    from tests.fleet import client

    return client(url)
