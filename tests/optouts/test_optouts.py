"""Opt-outs: inbound STOP/START (signed like callbacks), Plivo's error 200, the refusal on
send (before the Idempotency-Key, the limits and Plivo), and the list's API."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import func, select, update

from app.optouts.keywords import meaning
from app.retention import purge_once
from app.store.db import Database, FunctionOp
from app.store.tables import callback_nonces, idempotency_keys, inbound_messages, optout_history
from tests import fakeplivo as fp
from tests.conftest import API_KEYS, KEY_A, KEY_B, VALID
from tests.signing import FORM, form, v2_headers, v3_headers

PUBLIC = "https://mms.example.com"
INBOUND = f"{PUBLIC}/api/mms/inbound"
STATUS = f"{PUBLIC}/api/mms/status"
NUMBER = VALID["to"]  # +14155550100
A = {"Authorization": f"Bearer {KEY_A}"}
B = {"Authorization": f"Bearer {KEY_B}"}


@pytest.fixture
async def app(settings_factory, client_for, store_url):
    settings = settings_factory(public_base_url=PUBLIC, database_url=store_url, api_keys=API_KEYS)
    async with client_for(settings) as c:
        yield c


def inbound_params(text="STOP", sender="14155550100", **extra):
    p = {
        "From": sender,
        "To": "14155550000",
        "Type": "sms",
        "Text": text,
        "MessageUUID": str(uuid.uuid4()),
        "Units": "1",
    }
    return {**p, **extra}


async def post_inbound(client, params, headers=None):
    headers = v3_headers(INBOUND, params) if headers is None else headers
    return await client.post("/api/mms/inbound", content=form(params), headers={**FORM, **headers})


async def state_of(client, number=NUMBER):
    return await client.get(f"/api/optouts/{number}", headers=A)


async def send(client, headers=A, **extra):
    return await client.post("/api/mms/send", json=VALID, headers={**headers, **extra})


async def count(client, table):
    async with client.services.db.read() as conn:
        return (await conn.execute(select(func.count()).select_from(table))).scalar_one()


# Keywords (pure) -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "STOP",
        "stop",
        "  Stop  ",
        "STOP ALL",
        "stopall",
        "UNSUBSCRIBE",
        "Cancel",
        "end",
        "QUIT",
        "unsub",
        "REVOKE",
        "OptOut",
        "opt out",
        "S T O P",
        "\tstop\n",
    ],
)
def test_opt_out_keywords(text):
    assert meaning(text, None) == "optout"


@pytest.mark.parametrize("text", ["START", "start", " Un Stop ", "UNSTOP"])
def test_opt_in_keywords(text):
    assert meaning(text, None) == "optin"


@pytest.mark.parametrize(
    "text",
    ["HELP", "INFO", "please stop texting me", "STOP!", "stop.", "STOPP", "", None, "yes"],
)
def test_other_texts_change_nothing(text):
    assert meaning(text, None) is None


@pytest.mark.parametrize(
    ("text", "intent", "expected"),
    [
        ("hello", "optout", "optout"),
        ("hello", "OPTOUT", "optout"),
        ("hello", "optin", "optin"),
        ("STOP", "help", "optout"),
        ("HELP", "help", None),
        ("please stop texting me", "", None),
    ],
)
def test_message_intent(text, intent, expected):
    assert meaning(text, intent) == expected


# The inbound route -----------------------------------------------------------------------
async def test_stop_lists_the_sender_and_refuses_the_next_send(app, fake_plivo):
    response = await post_inbound(app, inbound_params("Stop"))
    assert response.status_code == 200 and response.content == b""
    entry = (await state_of(app)).json()
    assert entry["number"] == NUMBER and entry["optedOut"] is True
    assert entry["source"] == "inbound"
    assert [h["action"] for h in entry["history"]] == ["optout"]
    refused = await send(app)
    assert refused.status_code == 422
    assert refused.json()["code"] == "recipient_opted_out"
    assert refused.headers["content-type"] == "application/problem+json"
    assert fake_plivo.sends() == []


async def test_start_opts_back_in_with_history(app, fake_plivo):
    assert (await post_inbound(app, inbound_params("STOP"))).status_code == 200
    assert (await post_inbound(app, inbound_params(" start "))).status_code == 200
    entry = (await state_of(app)).json()
    assert entry["optedOut"] is False
    assert [(h["action"], h["source"]) for h in entry["history"]] == [
        ("optout", "inbound"),
        ("optin", "inbound"),
    ]
    fake_plivo.script(fp.ok())
    assert (await send(app)).status_code == 200


async def test_intent_opts_out_and_in(app):
    await post_inbound(app, inbound_params("no thanks", MessageIntent="optout"))
    assert (await state_of(app)).json()["optedOut"] is True
    await post_inbound(app, inbound_params("yes please", MessageIntent="optin"))
    assert (await state_of(app)).json()["optedOut"] is False


@pytest.mark.parametrize("text", ["please stop texting me", "HELP", "STOP texting"])
async def test_a_sentence_or_help_is_stored_but_changes_nothing(app, text):
    response = await post_inbound(app, inbound_params(text))
    assert response.status_code == 200
    assert (await state_of(app)).status_code == 404
    assert await count(app, inbound_messages) == 1


async def test_repeated_stop_writes_history_once(app):
    await post_inbound(app, inbound_params("STOP"))
    first = (await state_of(app)).json()
    await post_inbound(app, inbound_params("QUIT"))
    second = (await state_of(app)).json()
    assert second == first
    assert await count(app, optout_history) == 1


async def test_number_without_plus_and_media_both_numberings(app):
    params = inbound_params("STOP", sender="+14155550100", Type="mms", MediaCount="2", Text="") | {
        "Body": "stop",
        "Media0": "https://m.example/a.jpg",
        "Media1": "https://m.example/b.jpg",
    }
    assert (await post_inbound(app, params)).status_code == 200
    assert (await state_of(app)).json()["optedOut"] is True
    async with app.services.db.read() as conn:
        row = (await conn.execute(select(inbound_messages))).one()
    assert row.from_number == NUMBER and row.to_number == "+14155550000"
    assert row.media_urls == '["https://m.example/a.jpg","https://m.example/b.jpg"]'
    assert row.text is None  # STORE_MESSAGE_TEXT is off


async def test_text_kept_only_with_store_message_text(settings_factory, client_for):
    settings = settings_factory(public_base_url=PUBLIC, store_message_text=True)
    async with client_for(settings) as c:
        assert (await post_inbound(c, inbound_params("hello there"))).status_code == 200
        async with c.services.db.read() as conn:
            assert (await conn.execute(select(inbound_messages.c.text))).scalar() == "hello there"


@pytest.mark.parametrize(
    "change",
    [
        {"From": "not-a-number"},
        {"From": ""},
        {"MessageUUID": ""},
        {"MessageUUID": "a\x00b"},
        {"Media1": "javascript:alert(1)"},
        {"MediaCount": "many"},
        {"Text": "x" * 10_001},
    ],
)
async def test_malformed_inbound_is_422_and_changes_nothing(app, change):
    params = inbound_params("STOP") | change
    response = await post_inbound(app, params)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"
    assert (await state_of(app)).status_code == 404
    assert await count(app, inbound_messages) == 0


async def test_unsigned_or_badly_signed_inbound_is_403(app):
    params = inbound_params("STOP")
    assert (await post_inbound(app, params, headers={})).status_code == 403
    wrong = v3_headers(INBOUND, params, token="x" * 40)
    assert (await post_inbound(app, params, headers=wrong)).status_code == 403
    # Signed for the status route: not valid here (each route signs its own URL).
    other = v3_headers(STATUS, params)
    assert (await post_inbound(app, params, headers=other)).status_code == 403
    assert (await state_of(app)).status_code == 404


async def test_v2_signed_inbound_is_accepted(app):
    assert (
        await post_inbound(app, inbound_params(), headers=v2_headers(INBOUND))
    ).status_code == 200
    assert (await state_of(app)).json()["optedOut"] is True


async def test_replayed_nonce_changes_nothing(app):
    stop = inbound_params("STOP")
    headers = v3_headers(INBOUND, stop, nonce="n-1")
    assert (await post_inbound(app, stop, headers)).status_code == 200
    # The same V2 nonce with a forged START body: a replay, answered 200, no change.
    v2 = v2_headers(INBOUND, nonce="n-2")
    assert (await post_inbound(app, inbound_params("STOP"), v2)).status_code == 200
    assert (await post_inbound(app, inbound_params("START"), v2)).status_code == 200
    entry = (await state_of(app)).json()
    assert entry["optedOut"] is True and len(entry["history"]) == 1
    assert await count(app, inbound_messages) == 2


async def test_nonces_shared_with_status_callbacks(app):
    """One nonce store for both routes: a nonce seen on a callback is a replay here."""
    params = {"MessageUUID": "u-1", "Status": "sent", "To": "14155550100"}
    headers = v2_headers(STATUS, nonce="shared")
    ok = await app.post("/api/mms/status", content=form(params), headers={**FORM, **headers})
    assert ok.status_code == 200
    replay = await post_inbound(app, inbound_params("STOP"), v2_headers(INBOUND, nonce="shared"))
    assert replay.status_code == 200
    assert (await state_of(app)).status_code == 404


async def test_redelivered_message_uuid_changes_nothing(app):
    stop = inbound_params("STOP")
    await post_inbound(app, stop)
    start = {**inbound_params("START"), "MessageUUID": stop["MessageUUID"]}
    assert (await post_inbound(app, start)).status_code == 200
    assert (await state_of(app)).json()["optedOut"] is True


async def test_sandbox_accepts_unsigned_inbound(settings_factory, client_for, fake_plivo, capsys):
    settings = settings_factory(plivo_auth_id=None, plivo_auth_token=None, log_level="warning")
    async with client_for(settings) as c:
        response = await c.post(
            "/api/mms/inbound", content=form(inbound_params("STOP")), headers=FORM
        )
        assert response.status_code == 200
        assert (await c.post("/api/mms/send", json=VALID)).json()["code"] == "recipient_opted_out"
    assert "inbound_unsigned_accepted" in capsys.readouterr().out


async def test_inbound_answers_503_while_records_are_pending(app, monkeypatch):
    monkeypatch.setattr(type(app.services.db), "records_pending", property(lambda self: 1))
    response = await post_inbound(app, inbound_params("STOP"))
    assert response.status_code == 503
    monkeypatch.undo()
    assert (await state_of(app)).status_code == 404


# Plivo's error 200 -------------------------------------------------------------------------
@pytest.mark.parametrize("signer", ["v3", "v2"])
async def test_error_200_callback_lists_the_number(app, fake_plivo, signer):
    fake_plivo.script(fp.ok())
    message_uuid = (await send(app)).json()["messageUuid"][0]
    params = {"MessageUUID": message_uuid, "Status": "failed", "ErrorCode": "200"}
    headers = v3_headers(STATUS, params) if signer == "v3" else v2_headers(STATUS)
    response = await app.post("/api/mms/status", content=form(params), headers={**FORM, **headers})
    assert response.status_code == 200
    entry = (await state_of(app)).json()
    assert entry["optedOut"] is True and entry["source"] == "plivo_error_200"
    assert (await send(app)).json()["code"] == "recipient_opted_out"


async def test_error_200_for_an_unknown_message_uses_the_reports_number(app):
    params = {"MessageUUID": "early-1", "Status": "failed", "ErrorCode": "200", "To": "14155550123"}
    headers = v3_headers(STATUS, params)
    response = await app.post("/api/mms/status", content=form(params), headers={**FORM, **headers})
    assert response.status_code == 200
    assert (await state_of(app, "+14155550123")).json()["source"] == "plivo_error_200"


async def test_other_error_codes_list_nothing(app, fake_plivo):
    fake_plivo.script(fp.ok())
    message_uuid = (await send(app)).json()["messageUuid"][0]
    params = {"MessageUUID": message_uuid, "Status": "failed", "ErrorCode": "30"}
    headers = v3_headers(STATUS, params)
    await app.post("/api/mms/status", content=form(params), headers={**FORM, **headers})
    assert (await state_of(app)).status_code == 404


# The refusal on send ----------------------------------------------------------------------
async def test_refusal_counts_against_no_limit_or_quota(settings_factory, client_for, fake_plivo):
    settings = settings_factory(
        public_base_url=PUBLIC,
        api_keys=API_KEYS,
        rate_limit_per_destination="1/hour",
        daily_quota_per_key=1,
    )
    async with client_for(settings) as c:
        await post_inbound(c, inbound_params("STOP"))
        for _ in range(3):
            assert (await send(c)).json()["code"] == "recipient_opted_out"
        await post_inbound(c, inbound_params("START"))
        fake_plivo.script(fp.ok())
        assert (await send(c)).status_code == 200  # neither the limit nor the quota was used
        assert (await send(c)).json()["code"] in ("destination_rate_limited", "quota_exceeded")
        metrics = (await c.get("/metrics")).text
    assert 'mms_sends_total{code="recipient_opted_out"} 3.0' in metrics
    assert 'mms_optout_changes_total{action="optout",source="inbound"} 1.0' in metrics
    assert 'mms_optout_changes_total{action="optin",source="inbound"} 1.0' in metrics


async def test_refusal_stores_no_idempotency_key(app, fake_plivo):
    await post_inbound(app, inbound_params("STOP"))
    refused = await send(app, **{"Idempotency-Key": "k-1"})
    assert refused.json()["code"] == "recipient_opted_out"
    assert await count(app, idempotency_keys) == 0
    await post_inbound(app, inbound_params("START"))
    fake_plivo.script(fp.ok())
    again = await send(app, **{"Idempotency-Key": "k-1"})  # the same key, now free
    assert again.status_code == 200 and "idempotent-replayed" not in again.headers


async def test_a_stored_send_replays_even_after_stop(app, fake_plivo):
    fake_plivo.script(fp.ok())
    first = await send(app, **{"Idempotency-Key": "k-2"})
    assert first.status_code == 200
    await post_inbound(app, inbound_params("STOP"))
    replay = await send(app, **{"Idempotency-Key": "k-2"})
    assert replay.status_code == 200 and replay.json() == first.json()
    assert replay.headers["idempotent-replayed"] == "true"
    assert len(fake_plivo.sends()) == 1


@pytest.mark.parametrize("shared", ["postgres_url", "sqlite_url"])
async def test_stop_on_one_replica_refuses_on_another(
    settings_factory, client_for, fake_plivo, request, shared
):
    """Two app instances on one database (replicas on PostgreSQL; workers sharing one
    SQLite file): a STOP taken by one refuses the other's next send at once."""
    url = request.getfixturevalue(shared)
    settings = settings_factory(public_base_url=PUBLIC, database_url=url)
    async with client_for(settings) as one, client_for(settings) as two:
        fake_plivo.script(fp.ok())
        assert (await two.post("/api/mms/send", json=VALID)).status_code == 200
        assert (await post_inbound(one, inbound_params("STOP"))).status_code == 200
        refused = await two.post("/api/mms/send", json=VALID)
        assert refused.json()["code"] == "recipient_opted_out"
        assert (await post_inbound(two, inbound_params("START"))).status_code == 200
        fake_plivo.script(fp.ok())
        assert (await one.post("/api/mms/send", json=VALID)).status_code == 200


# The API ---------------------------------------------------------------------------------
async def test_get_unknown_number_is_404(app):
    response = await state_of(app, "+14155550199")
    assert response.status_code == 404 and response.json()["code"] == "not_found"


@pytest.mark.parametrize("number", ["+112015550177", "14155550100", "+1415555010x", "%2B1"])
async def test_non_canonical_numbers_are_422(app, number):
    assert (await state_of(app, number)).status_code == 422
    posted = await app.post("/api/optouts", json={"number": number}, headers=A)
    assert posted.status_code == 422 and posted.json()["code"] == "validation_error"


async def test_post_is_idempotent_and_needs_auth(app):
    assert (await app.post("/api/optouts", json={"number": NUMBER})).status_code == 401
    first = await app.post("/api/optouts", json={"number": NUMBER}, headers=A)
    assert first.status_code == 200
    entry = first.json()
    assert entry["optedOut"] is True and entry["source"] == "api:alpha"
    again = await app.post("/api/optouts", json={"number": NUMBER}, headers=B)
    assert again.status_code == 200 and again.json() == entry
    assert await count(app, optout_history) == 1
    assert (await send(app)).json()["code"] == "recipient_opted_out"
    assert (await app.delete(f"/api/optouts/{NUMBER}", headers=A)).status_code == 405


async def test_post_refuses_unknown_fields(app):
    response = await app.post("/api/optouts", json={"number": NUMBER, "x": 1}, headers=A)
    assert response.status_code == 422


async def test_listing_newest_first_with_cursor(app):
    numbers = [f"+1415555{n:04d}" for n in range(101, 106)]
    for number in numbers:
        assert (await app.post("/api/optouts", json={"number": number}, headers=A)).is_success
    seen, cursor = [], None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await app.get("/api/optouts", params=params, headers=A)).json()
        seen += [item["number"] for item in page["items"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == list(reversed(numbers))
    for bad in ("x", "", "MTox", "!!"):
        response = await app.get("/api/optouts", params={"cursor": bad}, headers=A)
        assert response.status_code == 422, bad
    for since, expected in (("2000-01-01T00:00:00", 5), ("2999-01-01T00:00:00Z", 0)):
        page = (await app.get("/api/optouts", params={"since": since}, headers=A)).json()
        assert len(page["items"]) == expected, since  # with or without an offset
    for bad in ("yesterday", "1700000000", "1.866519284748981e-307"):
        response = await app.get("/api/optouts", params={"since": bad}, headers=A)
        assert response.status_code == 422, bad
        assert response.json()["code"] == "validation_error", bad
    assert (await app.get("/api/optouts")).status_code == 401


async def test_listing_leaves_out_numbers_opted_back_in(app):
    await post_inbound(app, inbound_params("STOP"))
    await post_inbound(app, inbound_params("START"))
    page = (await app.get("/api/optouts", headers=A)).json()
    assert page["items"] == []


async def test_nonces_recorded_with_the_inbound_row(app):
    await post_inbound(app, inbound_params("STOP"), v3_headers(INBOUND, inbound_params()))
    # A signature over other params is invalid: nothing was recorded.
    assert await count(app, callback_nonces) == 0
    await post_inbound(app, inbound_params("STOP"))
    assert await count(app, callback_nonces) == 1


async def test_error_200_from_a_reconciliation_lookup_lists_the_number(
    settings_factory, client_for, fake_plivo, store_url, fast_reconciler
):
    settings = settings_factory(
        database_url=store_url, reconcile_after_seconds=0, reconcile_rate=50, api_keys=API_KEYS
    )
    async with client_for(settings) as c:
        message_uuid = (await send(c)).json()["messageUuid"][0]
        mdr = fake_plivo.mdrs[message_uuid]
        mdr.message_state, mdr.error_code = "failed", "200"
        for _ in range(100):
            if (await state_of(c)).status_code == 200:
                break
            await asyncio.sleep(0.1)
        entry = (await state_of(c)).json()
        assert entry["optedOut"] is True and entry["source"] == "plivo_error_200"
        assert (await send(c)).json()["code"] == "recipient_opted_out"


# The store ---------------------------------------------------------------------------------
async def test_migration_matches_the_tables(empty_store_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from app.store.tables import metadata

    db = Database(empty_store_url)
    await db.start()
    try:
        async with db.engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
            )
    finally:
        await db.close()
    assert diff == []


async def test_retention_purges_inbound_messages_but_keeps_the_list(app):
    await post_inbound(app, inbound_params("STOP"))
    db = app.services.db
    await db.write(FunctionOp(lambda c: c.execute(update(inbound_messages).values(received_at=0))))
    await purge_once(db, retention_days=1)
    assert await count(app, inbound_messages) == 0
    assert (await state_of(app)).json()["optedOut"] is True
    assert await count(app, optout_history) == 1
