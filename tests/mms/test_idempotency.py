"""Idempotency-Key: a retried call never becomes a second MMS (in process, both stores)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tests import fakeplivo as fp
from tests.helpers import API_KEYS, KEY_A, KEY_B, VALID

A = {"X-API-Key": KEY_A}
B = {"X-API-Key": KEY_B}


def keyed(key, caller=A):
    return {**caller, "Idempotency-Key": key}


@pytest.fixture
async def client(settings_factory, client_for, store_url):
    async with client_for(settings_factory(api_keys=API_KEYS, database_url=store_url)) as c:
        yield c


async def test_replay_returns_the_stored_response_without_a_second_send(client, fake_plivo):
    first = await client.post("/api/mms/send", json=VALID, headers=keyed("k1"))
    again = await client.post("/api/mms/send", json=VALID, headers=keyed("k1"))
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert len(fake_plivo.sends()) == 1


async def test_same_request_in_other_json_is_the_same_body(client, fake_plivo):
    """The fingerprint is of the validated request, not of the bytes."""
    await client.post("/api/mms/send", json=VALID, headers=keyed("k2"))
    reordered = (
        b'{ "text":"hello",  "media_urls":["https://example.com/a.png"], "to":"+14155550100"}'
    )
    response = await client.post(
        "/api/mms/send",
        content=reordered,
        headers={**keyed("k2"), "Content-Type": "application/json"},
    )
    assert response.status_code == 200 and response.headers["idempotent-replayed"] == "true"
    assert len(fake_plivo.sends()) == 1


async def test_key_reused_with_another_body_is_422(client, fake_plivo):
    await client.post("/api/mms/send", json=VALID, headers=keyed("k3"))
    response = await client.post(
        "/api/mms/send", json={**VALID, "text": "other"}, headers=keyed("k3")
    )
    assert response.status_code == 422
    assert response.json()["code"] == "idempotency_key_reused"
    assert len(fake_plivo.sends()) == 1


async def test_keys_are_scoped_per_caller(client, fake_plivo):
    await client.post("/api/mms/send", json=VALID, headers=keyed("shared", A))
    other = await client.post("/api/mms/send", json=VALID, headers=keyed("shared", B))
    assert other.status_code == 200 and "idempotent-replayed" not in other.headers
    assert len(fake_plivo.sends()) == 2


async def test_concurrent_requests_with_one_key_make_one_call(
    settings_factory, client_for, store_url, fake_plivo
):
    """50 at once: the database lets one through; the others get 409 while it is in flight.
    Plivo answers the one only after the other 49 have their answers (within 30 s; the
    Plivo deadline is longer than that), however slowly a loaded machine serves them."""
    answer = threading.Event()
    fake_plivo.set_default(fp.ok(release=answer))
    settings = settings_factory(api_keys=API_KEYS, database_url=store_url, plivo_timeout_seconds=60)
    async with client_for(settings) as client:
        posts = [
            asyncio.create_task(client.post("/api/mms/send", json=VALID, headers=keyed("burst")))
            for _ in range(50)
        ]
        pending = set(posts)
        try:
            async with asyncio.timeout(30):
                while len(pending) > 1:
                    _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            pass  # more than one is held at Plivo: the assertions below say how many
        finally:
            answer.set()
        responses = await asyncio.gather(*posts)
        assert len(fake_plivo.sends()) == 1
        statuses = sorted(r.status_code for r in responses)
        assert statuses.count(200) == 1 and statuses.count(409) == 49, statuses
        conflict = next(r for r in responses if r.status_code == 409)
        assert conflict.json()["code"] == "idempotency_in_progress"
        assert conflict.headers["retry-after"] == "1"
        replay = await client.post("/api/mms/send", json=VALID, headers=keyed("burst"))
    assert replay.status_code == 200 and replay.headers["idempotent-replayed"] == "true"


@pytest.mark.parametrize(
    "header",
    ["", "x" * 256, "naïve", "tab\there"],
    ids=["empty", "too long", "non-ascii", "control"],
)
async def test_bad_idempotency_key_is_422(client, fake_plivo, header):
    response = await client.post(
        "/api/mms/send", json=VALID, headers={**A, "Idempotency-Key": header.encode("utf-8")}
    )
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "validation_error"
    assert body["errors"][0]["field"] == "Idempotency-Key"
    assert fake_plivo.sends() == []


# The storage rule, row by row: (fake actions, first status, stored?)
STORED = [
    ("2xx", [fp.ok()], 200, True),
    ("plivo 400", [fp.status(400, "bad number")], 400, True),
    ("plivo 422", [fp.status(422, "unprocessable")], 400, True),
    ("plivo 500", [fp.status(500)], 502, True),
    ("plivo 502", [fp.status(502)], 502, True),
    ("plivo 504", [fp.status(504)], 502, True),
    ("dropped after sending", [fp.drop()], 502, True),
    ("timeout", [fp.hang()], 504, True),
    ("plivo 401", [fp.status(401)], 502, False),
    ("plivo 403", [fp.status(403)], 502, False),
    ("plivo 429", [fp.status(429, retry_after="0")], 503, False),
    ("plivo 503", [fp.status(503, retry_after="0")], 503, False),
]


@pytest.mark.parametrize(
    ("name", "actions", "status", "stored"), STORED, ids=[r[0] for r in STORED]
)
async def test_storage_rule(
    settings_factory, client_for, store_url, fake_plivo, name, actions, status, stored
):
    """Stored outcomes replay (no new call); the others let the same key reach Plivo again."""
    settings = settings_factory(api_keys=API_KEYS, database_url=store_url, plivo_timeout_seconds=1)
    async with client_for(settings) as client:
        fake_plivo.set_default(actions[0])  # every attempt of the first request fails alike
        first = await client.post("/api/mms/send", json=VALID, headers=keyed(f"rule-{name}"))
        fake_plivo.set_default(fp.ok())
        calls = len(fake_plivo.sends())
        again = await client.post("/api/mms/send", json=VALID, headers=keyed(f"rule-{name}"))
    assert first.status_code == status
    if stored:
        assert again.status_code == status
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json() == first.json()
        assert len(fake_plivo.sends()) == calls
    else:
        assert "idempotent-replayed" not in again.headers
        assert again.status_code == 200  # the fake is back to normal: the retry got through
        assert len(fake_plivo.sends()) == calls + 1


async def test_our_own_rejections_are_not_stored(
    settings_factory, client_for, store_url, fake_plivo
):
    """A destination-limited send may be retried with the same key once the limit allows."""
    settings = settings_factory(
        api_keys=API_KEYS, database_url=store_url, rate_limit_per_destination="1/hour"
    )
    async with client_for(settings) as client:
        await client.post("/api/mms/send", json=VALID, headers=A)
        limited = await client.post("/api/mms/send", json=VALID, headers=keyed("lim"))
        await client.services.limits.store.reset()
        retried = await client.post("/api/mms/send", json=VALID, headers=keyed("lim"))
    assert limited.json()["code"] == "destination_rate_limited"
    assert retried.status_code == 200 and "idempotent-replayed" not in retried.headers


async def test_replays_do_not_count_against_limits(
    settings_factory, client_for, store_url, fake_plivo
):
    settings = settings_factory(
        api_keys=API_KEYS,
        database_url=store_url,
        rate_limit_per_destination="1/hour",
        daily_quota_per_key=1,
    )
    async with client_for(settings) as client:
        for _ in range(3):
            assert (
                await client.post("/api/mms/send", json=VALID, headers=keyed("once"))
            ).status_code == 200
    assert len(fake_plivo.sends()) == 1


async def test_unknown_outcome_is_found_by_idempotency_key(client, fake_plivo):
    fake_plivo.script(fp.drop())
    await client.post("/api/mms/send", json=VALID, headers=keyed("lost"))
    listed = (await client.get("/api/mms", params={"idempotencyKey": "lost"}, headers=A)).json()
    [message] = listed["items"]
    assert (message["status"], message["messageUuid"], message["idempotencyKey"]) == (
        "unknown",
        None,
        "lost",
    )
    by_id = await client.get(f"/api/mms/{message['id']}", headers=A)
    assert by_id.status_code == 200


async def test_accepted_keyed_send_is_one_record(client, fake_plivo):
    await client.post("/api/mms/send", json=VALID, headers=keyed("one"))
    await client.post("/api/mms/send", json=VALID, headers=keyed("one"))
    listed = (await client.get("/api/mms", params={"idempotencyKey": "one"}, headers=A)).json()
    assert [m["status"] for m in listed["items"]] == ["queued"]
