"""POST /api/mms/status: signed Plivo callbacks move statuses forward, never backwards."""

from __future__ import annotations

import uuid

import pytest
from plivo.utils import validate_signature
from plivo.utils.signature_v3 import construct_post_url, validate_v3_signature

from tests import fakeplivo as fp
from tests.fakeplivo import AUTH_TOKEN
from tests.helpers import VALID
from tests.signing import FORM, form, v2_headers, v3_headers

PUBLIC = "https://mms.example.com"
URL = f"{PUBLIC}/api/mms/status"


@pytest.fixture
async def app(settings_factory, client_for, store_url):
    async with client_for(settings_factory(public_base_url=PUBLIC, database_url=store_url)) as c:
        yield c


async def callback(client, params, headers=None, *, signer="v3"):
    if headers is None:
        headers = v3_headers(URL, params) if signer == "v3" else v2_headers(URL)
    return await client.post("/api/mms/status", content=form(params), headers={**FORM, **headers})


async def send(client, fake, message_uuid=None):
    fake.script(fp.ok(uuid=message_uuid))
    response = await client.post("/api/mms/send", json=VALID)
    assert response.status_code == 200
    return response.json()["messageUuid"][0]


async def status_of(client, message_uuid):
    return (await client.get(f"/api/mms/{message_uuid}")).json()


def params(message_uuid, status, sequence=None, **extra):
    p = {"MessageUUID": message_uuid, "Status": status, "To": "14155550100", "From": "14155550000"}
    if sequence is not None:
        p["Sequence"] = str(sequence)
    return {**p, **extra}


def test_sdk_helpers_build_the_documented_strings():
    """Our V3 input strings are the ones both Plivo SDKs (Python and Node.js) sign."""
    body = {"To": "14155550100", "From": "14155550199", "Status": "delivered"}
    assert construct_post_url("https://example.com/cb", dict(body)).decode() == (
        "https://example.com/cb?From14155550199StatusdeliveredTo14155550100"
    )
    assert construct_post_url(
        "https://example.com/cb?b=2&a=1", {"To": "1", "From": "2"}
    ).decode() == ("https://example.com/cb?a=1&b=2.From2To1")


def test_test_signers_agree_with_the_sdk_validators():
    p = params("u-1", "sent")
    h3 = v3_headers(URL, p)
    assert validate_v3_signature(
        "POST",
        URL,
        h3["X-Plivo-Signature-V3-Nonce"],
        AUTH_TOKEN,
        h3["X-Plivo-Signature-V3"],
        dict(p),
    )
    h2 = v2_headers(URL)
    assert validate_signature(
        URL, h2["X-Plivo-Signature-V2-Nonce"], h2["X-Plivo-Signature-V2"], AUTH_TOKEN
    )


async def test_v3_signed_callback_moves_the_status(app, fake_plivo):
    message_uuid = await send(app, fake_plivo)
    response = await callback(app, params(message_uuid, "delivered", 3))
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    message = await status_of(app, message_uuid)
    assert message["status"] == "delivered"
    assert [e["status"] for e in message["events"]] == ["delivered"]
    assert fake_plivo.lookups() == []  # no outbound call on the callback path


async def test_v2_signed_callback_is_accepted(app, fake_plivo):
    message_uuid = await send(app, fake_plivo)
    assert (await callback(app, params(message_uuid, "sent", 2), signer="v2")).status_code == 200
    assert (await status_of(app, message_uuid))["status"] == "sent"


async def test_several_signatures_one_valid(app, fake_plivo):
    message_uuid = await send(app, fake_plivo)
    p = params(message_uuid, "sent", 2)
    headers = v3_headers(URL, p)
    headers["X-Plivo-Signature-V3"] = "bm90LXRoaXMtb25l," + headers["X-Plivo-Signature-V3"]
    assert (await callback(app, p, headers)).status_code == 200


def _bad_signatures(p):
    good3, good2 = v3_headers(URL, p), v2_headers(URL)
    return {
        "v3 missing": {},
        "v3 wrong": {**good3, "X-Plivo-Signature-V3": "d3Jvbmc="},
        "v3 without nonce": {"X-Plivo-Signature-V3": good3["X-Plivo-Signature-V3"]},
        "v3 other nonce": {**good3, "X-Plivo-Signature-V3-Nonce": "other"},
        "v3 other token": v3_headers(URL, p, token="someone-elses-token"),
        "v3 other URL": v3_headers("https://evil.example.com/api/mms/status", p),
        "v3 http not https": v3_headers(URL.replace("https", "http"), p),
        "v3 other body": v3_headers(URL, {**p, "Status": "failed"}),
        "v2 wrong": {**good2, "X-Plivo-Signature-V2": "d3Jvbmc="},
        "v2 other URL": v2_headers("https://evil.example.com/api/mms/status"),
        "v2 without nonce": {"X-Plivo-Signature-V2": good2["X-Plivo-Signature-V2"]},
        "v3 wrong even with v2 right": {
            **good2,
            "X-Plivo-Signature-V3": "d3Jvbmc=",
            "X-Plivo-Signature-V3-Nonce": "n",
        },
    }


@pytest.mark.parametrize("case", list(_bad_signatures(params("x", "sent"))))
async def test_bad_signature_is_403_and_changes_nothing(app, fake_plivo, case):
    message_uuid = await send(app, fake_plivo)
    p = params(message_uuid, "delivered", 3)
    response = await callback(app, p, _bad_signatures(p)[case])
    assert response.status_code == 403
    assert response.json()["code"] == "invalid_signature"
    message = await status_of(app, message_uuid)
    assert message["status"] == "queued" and message["events"] == []


async def test_out_of_order_never_moves_backwards(app, fake_plivo):
    message_uuid = await send(app, fake_plivo)
    await callback(app, params(message_uuid, "delivered", 3))
    await callback(app, params(message_uuid, "sent", 2))
    await callback(app, params(message_uuid, "queued", 1))
    message = await status_of(app, message_uuid)
    assert message["status"] == "delivered"
    assert sorted(e["status"] for e in message["events"]) == ["delivered", "queued", "sent"]


async def test_first_final_status_stays(app, fake_plivo):
    message_uuid = await send(app, fake_plivo)
    await callback(app, params(message_uuid, "delivered", 3))
    await callback(app, params(message_uuid, "undelivered", 4, ErrorCode="80"))
    message = await status_of(app, message_uuid)
    assert message["status"] == "delivered" and message["errorCode"] is None


async def test_duplicates_are_harmless(app, fake_plivo):
    """Plivo's retries (new nonce, same report) store one event and change nothing more."""
    message_uuid = await send(app, fake_plivo)
    for _ in range(3):
        assert (await callback(app, params(message_uuid, "sent", 2))).status_code == 200
    message = await status_of(app, message_uuid)
    assert message["status"] == "sent" and len(message["events"]) == 1


async def test_replayed_nonce_changes_nothing(app, fake_plivo):
    """V2 signs only URL+nonce: a replay with a forged body is stopped by the nonce."""
    message_uuid = await send(app, fake_plivo)
    headers = v2_headers(URL, nonce="nonce-123")
    first = await callback(app, params(message_uuid, "sent", 2), headers)
    replay = await callback(app, params(message_uuid, "failed", 3, ErrorCode="30"), headers)
    assert first.json() == {"status": "ok"}
    assert replay.status_code == 200 and replay.json() == {"status": "duplicate"}
    message = await status_of(app, message_uuid)
    assert message["status"] == "sent" and len(message["events"]) == 1


async def test_early_callback_is_applied_when_the_record_lands(app, fake_plivo):
    """A callback for a uuid not yet recorded is kept, then applied in Sequence order."""
    message_uuid = str(uuid.uuid4())
    await callback(app, params(message_uuid, "undelivered", 3, ErrorCode="80"))
    await callback(app, params(message_uuid, "sent", 2))
    await send(app, fake_plivo, message_uuid)
    message = await status_of(app, message_uuid)
    assert message["status"] == "undelivered"
    assert message["errorCode"] == "80"
    assert message["errorMessage"].startswith("Destination temporarily unavailable")


async def test_error_code_and_message(app, fake_plivo):
    message_uuid = await send(app, fake_plivo)
    await callback(app, params(message_uuid, "failed", 3, ErrorCode="200"))
    message = await status_of(app, message_uuid)
    assert (message["status"], message["errorCode"]) == ("failed", "200")
    assert "STOP" in message["errorMessage"]


@pytest.mark.parametrize("missing", ["MessageUUID", "Status"])
async def test_signed_but_incomplete_is_422(app, missing):
    p = params(str(uuid.uuid4()), "sent")
    del p[missing]
    response = await callback(app, p)
    assert response.status_code == 422 and response.json()["code"] == "validation_error"


async def test_without_public_base_url_the_called_url_is_signed(
    settings_factory, client_for, sqlite_url
):
    async with client_for(settings_factory(database_url=sqlite_url)) as client:
        p = params(str(uuid.uuid4()), "sent")
        ok = await client.post(
            "/api/mms/status",
            content=form(p),
            headers={**FORM, **v3_headers("http://testserver/api/mms/status", p)},
        )
        bad = await client.post(
            "/api/mms/status", content=form(p), headers={**FORM, **v3_headers(URL, p)}
        )
    assert (ok.status_code, bad.status_code) == (200, 403)


async def test_callbacks_are_not_rate_limited(settings_factory, client_for, sqlite_url):
    async with client_for(
        settings_factory(rate_limit="1/minute", database_url=sqlite_url, public_base_url=PUBLIC)
    ) as client:
        for _ in range(5):
            assert (await callback(client, params(str(uuid.uuid4()), "sent"))).status_code == 200
