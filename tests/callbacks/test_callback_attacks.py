"""Hostile callbacks: bounded, linear form parsing before anything costly (row 1), and
every nonce of a request recorded whichever signature scheme was checked (row 2)."""

from __future__ import annotations

import statistics
import time

import pytest

from app.config import ConfigError, load_settings
from tests.callbacks.test_callbacks import PUBLIC, URL, callback, params, send, status_of
from tests.signing import FORM, v2_headers, v3_headers

HOSTILE = b"a&" * 32767 + b"a"  # 64 KiB of one repeated empty field
BOGUS_V3 = {"X-Plivo-Signature-V3": "Ym9ndXM=", "X-Plivo-Signature-V3-Nonce": "n-1"}
BOGUS_V2 = {"X-Plivo-Signature-V2": "Ym9ndXM=", "X-Plivo-Signature-V2-Nonce": "n-2"}


@pytest.fixture
async def app(settings_factory, client_for, store_url):
    async with client_for(settings_factory(public_base_url=PUBLIC, database_url=store_url)) as c:
        yield c


@pytest.fixture
async def sqlite_app(settings_factory, client_for):
    async with client_for(settings_factory(public_base_url=PUBLIC)) as c:
        yield c


@pytest.mark.parametrize(
    ("headers", "expected"),
    [({}, 403), (BOGUS_V3, 422), (BOGUS_V2, 403)],
    ids=["unsigned", "bogus-v3", "bogus-v2"],
)
async def test_row1_hostile_64k_body_costs_under_5ms_of_cpu(sqlite_app, headers, expected):
    """Row 1: a 64 KiB body of repeated empty keys cost ~0.5 s of CPU before the signature
    check (repeated keys collected quadratically). Unsigned it is refused before the body
    is read; with a bogus V2 signature before it is parsed; with a bogus V3 one the bounded
    parser stops at the field limit. Measured in CPU time of this process (the in-process
    app and its client), the median of several requests, against a generous bound."""
    costs = []
    for _ in range(5):
        started = time.process_time()
        response = await sqlite_app.post(
            "/api/mms/status", content=HOSTILE, headers={**FORM, **headers}
        )
        costs.append(time.process_time() - started)
        assert response.status_code == expected
    assert statistics.median(costs) < 0.005, costs


async def test_row1_more_than_100_fields_is_422(app, fake_plivo):
    """Row 1: a correctly signed form with 101 fields is refused; 100 are accepted."""
    message_uuid = await send(app, fake_plivo)
    base = params(message_uuid, "sent", 2)
    filler = 100 - len(base)
    accepted = {**base, **{f"X{i}": "" for i in range(filler)}}
    refused = {**accepted, "Extra": "1"}
    assert len(accepted) == 100
    response = await callback(app, refused)
    assert response.status_code == 422 and response.json()["code"] == "validation_error"
    assert (await status_of(app, message_uuid))["status"] == "queued"
    assert (await callback(app, accepted)).status_code == 200
    assert (await status_of(app, message_uuid))["status"] == "sent"


async def test_row1_repeated_field_is_422(app, fake_plivo):
    """Row 1: a correctly signed form naming a field twice is refused, changing nothing."""
    message_uuid = await send(app, fake_plivo)
    p = {**params(message_uuid, "delivered", 3), "To": ["14155550100", "14155550101"]}
    response = await callback(app, p)
    assert response.status_code == 422 and response.json()["code"] == "validation_error"
    message = await status_of(app, message_uuid)
    assert message["status"] == "queued" and message["events"] == []


async def test_row2_v2_replay_of_a_dual_signed_callback_is_a_duplicate(app, fake_plivo):
    """Row 2: a callback signed with both schemes is checked by V3, but its V2 nonce is
    recorded too: replayed with only its V2 headers (V2 does not sign the body) and a
    forged body, it is a duplicate and changes nothing."""
    message_uuid = await send(app, fake_plivo)
    genuine = params(message_uuid, "delivered", 3)
    v2 = v2_headers(URL)
    both = {**v3_headers(URL, genuine), **v2}
    first = await callback(app, genuine, both)
    assert first.status_code == 200 and first.json() == {"status": "ok"}
    forged = params(message_uuid, "failed", 4, ErrorCode="900")
    replay = await callback(app, forged, v2)
    assert replay.status_code == 200 and replay.json() == {"status": "duplicate"}
    message = await status_of(app, message_uuid)
    assert message["status"] == "delivered" and message["errorCode"] is None
    assert [e["status"] for e in message["events"]] == ["delivered"]


async def test_row2_plivo_signature_v3_refuses_v2(settings_factory, client_for, fake_plivo):
    """Row 2: PLIVO_SIGNATURE=v3 refuses a V2-only callback (403) and accepts V3."""
    settings = settings_factory(public_base_url=PUBLIC, plivo_signature="v3")
    async with client_for(settings) as app:
        message_uuid = await send(app, fake_plivo)
        refused = await callback(app, params(message_uuid, "sent", 2), signer="v2")
        assert refused.status_code == 403 and refused.json()["code"] == "invalid_signature"
        assert (await status_of(app, message_uuid))["status"] == "queued"
        assert (await callback(app, params(message_uuid, "sent", 2))).status_code == 200


async def test_row2_plivo_signature_v2_checks_only_v2(settings_factory, client_for, fake_plivo):
    """Row 2: PLIVO_SIGNATURE=v2 accepts a V2-only callback and ignores V3 headers: a good
    V3 signature does not make up for a wrong V2 one."""
    settings = settings_factory(public_base_url=PUBLIC, plivo_signature="v2")
    async with client_for(settings) as app:
        message_uuid = await send(app, fake_plivo)
        p = params(message_uuid, "sent", 2)
        only_v3 = await callback(app, p, v3_headers(URL, p))
        assert only_v3.status_code == 403
        wrong_v2 = {**v3_headers(URL, p), **BOGUS_V2}
        assert (await callback(app, p, wrong_v2)).status_code == 403
        assert (await status_of(app, message_uuid))["status"] == "queued"
        assert (await callback(app, p, signer="v2")).status_code == 200
        assert (await status_of(app, message_uuid))["status"] == "sent"


def test_row2_plivo_signature_setting_is_validated():
    assert load_settings(_env_file=None, plivo_signature="V3").plivo_signature == "v3"
    assert load_settings(_env_file=None).plivo_signature == "any"
    with pytest.raises(ConfigError, match=r"^PLIVO_SIGNATURE: .*'v3', 'v2' or 'any'"):
        load_settings(_env_file=None, plivo_signature="v4")


async def test_row2_a_day_old_nonce_still_stops_a_replay(app, fake_plivo, store_url):
    """Row 2: nonces were purged after 24 h, so a V2 signature captured once could carry a
    forged body a day later. They are kept as long as messages (RETENTION_DAYS)."""
    from sqlalchemy import text

    from app.retention import purge_once
    from app.store.repository import now_ms

    message_uuid = await send(app, fake_plivo)
    v2 = v2_headers(URL)
    assert (await callback(app, params(message_uuid, "delivered", 3), v2)).status_code == 200
    db = app.services.db
    async with db.engine.begin() as conn:
        await conn.execute(
            text("UPDATE callback_nonces SET seen_at = :t"), {"t": now_ms() - 25 * 3600_000}
        )
    await purge_once(db, retention_days=90)
    replay = await callback(app, params(message_uuid, "failed", 4, ErrorCode="900"), v2)
    assert replay.json() == {"status": "duplicate"}
    assert (await status_of(app, message_uuid))["status"] == "delivered"
