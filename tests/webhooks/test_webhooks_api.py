"""Webhooks around the edges: the deliveries API's rows, the operator's CLI, startup
refusals, metrics, text erasure, retention, a crash before delivery, two replicas."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from sqlalchemy import select, update

from app.config import ConfigError, load_settings
from app.retention import purge_once
from app.store import webhooks as store
from app.store.db import Database, FunctionOp
from app.store.tables import webhook_deliveries
from tests.helpers import API_KEYS, VALID, app_process, startup_refusal
from tests.loopback import http_post
from tests.server import Server, base_env
from tests.webhook_receiver import SECRET, Receiver
from tests.webhooks.test_webhooks import A, B, deliveries, hooked, hooks, inbound, receiver, until

__all__ = ["hooked", "receiver"]  # fixtures, re-used


async def fail_all(client) -> None:
    """Every delivery of this store is `failed` (as after its last attempt)."""
    await client.services.webhooks.stop()
    await client.services.db.write(
        FunctionOp(
            lambda c: c.execute(
                update(webhook_deliveries).values(
                    status="failed", next_attempt_at=None, last_error="HTTP 500", attempts=7
                )
            )
        )
    )


# The API's rows --------------------------------------------------------------------------------
async def test_listing_is_the_callers_own_newest_first_with_a_cursor(
    hooked, client_for, receiver, fake_plivo
):
    async with client_for(hooked()) as client:
        for i in range(5):
            body = {**VALID, "to": f"+1415555{3000 + i}"}
            assert (await client.post("/api/mms/send", json=body, headers=A)).status_code == 200
        await client.post("/api/mms/send", json=VALID, headers=B)
        await until(lambda: len(receiver.got()) == 12)  # 5+1 to `*`, 5 alpha, 1 bravo
        await until(lambda: client.services.webhooks.in_flight == 0)
        first = (await client.get("/api/webhooks/deliveries?limit=3", headers=A)).json()
        second = (
            await client.get(
                f"/api/webhooks/deliveries?limit=3&cursor={first['nextCursor']}", headers=A
            )
        ).json()
        delivered = await client.get("/api/webhooks/deliveries?status=delivered", headers=A)
        failed = await client.get("/api/webhooks/deliveries?status=failed", headers=A)
        mine = {r.id for r in receiver.got("/alpha")}
    items = first["items"] + second["items"]
    assert len(items) == 5 and second["nextCursor"] is None
    assert {i["id"] for i in items} == mine  # alpha's own endpoint; not `*`'s, not bravo's
    assert [i["createdAt"] for i in items] == sorted((i["createdAt"] for i in items), reverse=True)
    assert set(items[0]) == {
        "id",
        "type",
        "status",
        "attempts",
        "lastError",
        "nextAttemptAt",
        "createdAt",
    }
    assert items[0]["status"] == "delivered" and items[0]["attempts"] == 1
    assert items[0]["type"] == "message.status" and items[0]["nextAttemptAt"] is None
    assert len(delivered.json()["items"]) == 5 and failed.json()["items"] == []


@pytest.mark.parametrize(
    "query",
    [
        "cursor=not-a-cursor",
        "cursor=",
        "cursor=MTIzOm1zZ19h",  # base64 of a truncated position
        "status=bogus",
        "status=pend%00ing",
        "limit=0",
        "limit=101",
    ],
)
async def test_listing_refuses_bad_queries_with_422(hooked, client_for, query):
    async with client_for(hooked()) as client:
        response = await client.get(f"/api/webhooks/deliveries?{query}", headers=A)
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "validation_error"


async def test_routes_need_a_key(hooked, client_for):
    async with client_for(hooked()) as client:
        listed = await client.get("/api/webhooks/deliveries")
        retried = await client.post(f"/api/webhooks/deliveries/msg_{'0' * 32}/retry")
    for response in (listed, retried):
        assert response.status_code == 401 and response.json()["code"] == "unauthorized"


@pytest.mark.parametrize("ident", [f"msg_{'0' * 32}", "nope", "msg_" + "a" * 300, "%00"])
async def test_retry_of_an_unknown_or_malformed_id_is_404(hooked, client_for, ident):
    async with client_for(hooked()) as client:
        response = await client.post(f"/api/webhooks/deliveries/{ident}/retry", headers=A)
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert response.json()["detail"] == "No webhook delivery with this id for this API key."


async def test_retry_rows_404_409_202(hooked, client_for, receiver, fake_plivo):
    receiver.status = 500
    async with client_for(hooked(webhooks=hooks(receiver, alpha="/alpha", all="/all"))) as c:
        c.services.webhooks.uniform = lambda a, b: 1000.0  # no retry during the test
        await c.post("/api/mms/send", json=VALID, headers=A)
        await until(lambda: len(receiver.got()) == 2)
        await until(lambda: c.services.webhooks.in_flight == 0)
        [mine] = (await c.get("/api/webhooks/deliveries", headers=A)).json()["items"]
        [star] = await deliveries(c, webhook_deliveries.c.endpoint == "*")
        pending = await c.post(f"/api/webhooks/deliveries/{mine['id']}/retry", headers=A)
        await fail_all(c)
        others = await c.post(f"/api/webhooks/deliveries/{mine['id']}/retry", headers=B)
        stars = await c.post(f"/api/webhooks/deliveries/{star['id']}/retry", headers=A)
        requeued = await c.post(f"/api/webhooks/deliveries/{mine['id']}/retry", headers=A)
        [row] = await deliveries(c, webhook_deliveries.c.id == mine["id"])
    assert mine["status"] == "pending" and mine["lastError"] == "HTTP 500"
    assert mine["nextAttemptAt"] is not None and mine["attempts"] == 1
    assert pending.status_code == 409
    assert pending.json()["code"] == "delivery_not_failed"
    assert pending.json()["detail"] == "This delivery is pending, not failed."
    assert others.status_code == 404 and others.json()["code"] == "not_found"
    assert stars.status_code == 404  # the `*` endpoint's deliveries belong to no caller
    assert requeued.status_code == 202
    assert requeued.json()["status"] == "pending" and requeued.json()["id"] == mine["id"]
    assert row["status"] == "pending" and row["next_attempt_at"] is not None


async def test_openapi_declares_the_routes_and_their_errors(hooked, client_for):
    async with client_for(hooked()) as client:
        schema = (await client.get("/openapi.json")).json()
    listing = schema["paths"]["/api/webhooks/deliveries"]["get"]["responses"]
    retry = schema["paths"]["/api/webhooks/deliveries/{id}/retry"]["post"]["responses"]
    assert {"200", "401", "422", "503"} <= set(listing)
    assert {"202", "401", "404", "409", "503"} <= set(retry)
    assert "delivery_not_failed" in retry["409"]["description"]


# The operator's CLI for the `*` endpoint ---------------------------------------------------------
async def test_cli_lists_and_retries_star_deliveries(
    hooked, client_for, receiver, fake_plivo, sqlite_url, app_command
):
    """`python -m app webhooks ...`: the listing from a real process, the rest through the
    same entry point in this process."""

    async def cli(*args):
        return await app_command(sqlite_url, "webhooks", *args)

    receiver.status = 500
    async with client_for(hooked(database_url=sqlite_url)) as client:
        client.services.webhooks.uniform = lambda a, b: 1000.0  # no retry during the test
        await inbound(client, "hello")
        await client.post("/api/mms/send", json=VALID, headers=A)
        await until(lambda: len(receiver.got()) == 3)
        await until(lambda: client.services.webhooks.in_flight == 0)
        await fail_all(client)
        [inbound_row] = await deliveries(client, webhook_deliveries.c.type == "message.inbound")
        [alpha_row] = await deliveries(client, webhook_deliveries.c.endpoint == "alpha")
    listed = app_process(sqlite_url, "webhooks", "list")
    failed = await cli("list", "failed")
    delivered = await cli("list", "delivered")
    bad = await cli("list", "bogus")
    not_star = await cli("retry", alpha_row["id"])
    malformed = await cli("retry", "nope")
    requeued = await cli("retry", inbound_row["id"])
    again = await cli("retry", inbound_row["id"])
    assert listed.returncode == 0, listed.stderr
    lines = [line.split("\t") for line in listed.stdout.splitlines() if line.startswith("msg_")]
    assert len(lines) == 2  # the `*` endpoint's two: the inbound message and the status
    assert {line[2] for line in lines} == {"message.inbound", "message.status"}
    assert all(line[3] == "failed" and line[5] == "HTTP 500" for line in lines)
    assert len([ln for ln in failed.stdout.splitlines() if ln.startswith("msg_")]) == 2
    assert not [ln for ln in delivered.stdout.splitlines() if ln.startswith("msg_")]
    assert bad.returncode == 2 and "usage" in bad.stderr
    assert not_star.returncode == 1 and "no delivery" in not_star.stderr
    assert malformed.returncode == 2
    assert requeued.returncode == 0, requeued.stderr
    assert "re-queued" in requeued.stdout
    assert again.returncode == 1 and "pending, not failed" in again.stderr
    assert "hello" not in listed.stdout + listed.stderr  # no text, ever


# Startup refusals, row by row ---------------------------------------------------------------------
GOOD_SECRET = SECRET
REFUSALS = [
    ({"WEBHOOKS": "alpha"}, "WEBHOOKS:", "name=url"),
    ({"WEBHOOKS": "=https://x.example"}, "WEBHOOKS:", "name=url"),
    ({"WEBHOOKS": "alpha=ftp://x.example/h"}, "WEBHOOKS:", "http(s)"),
    ({"WEBHOOKS": "alpha=https://"}, "WEBHOOKS:", "http(s)"),
    ({"WEBHOOKS": "alpha=/relative"}, "WEBHOOKS:", "http(s)"),
    ({"WEBHOOKS": "alpha=https://u:p@x.example/h"}, "WEBHOOKS:", "credentials"),
    ({"WEBHOOKS": "al pha=https://x.example"}, "WEBHOOKS:", "not an API key name"),
    ({"WEBHOOKS": "alpha=https://a.example,alpha=https://b.example"}, "WEBHOOKS:", "twice"),
    ({"WEBHOOKS": "charlie=https://x.example"}, "WEBHOOKS:", "not the name of a key"),
    ({"WEBHOOKS": "*=https://x.example"}, "WEBHOOK_SECRET:", "required"),
    ({"WEBHOOK_SECRET": "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}, "WEBHOOK_SECRET:", "whsec_"),
    ({"WEBHOOK_SECRET": "whsec_c2hvcnQ="}, "WEBHOOK_SECRET:", "24 random bytes"),
    ({"WEBHOOK_SECRET": "whsec_not base64!!"}, "WEBHOOK_SECRET:", "base64"),
]


@pytest.mark.parametrize(("env", "variable", "words"), REFUSALS)
def test_startup_refuses_a_bad_webhook_setting_in_one_line(monkeypatch, env, variable, words):
    monkeypatch.setenv("API_KEYS", API_KEYS)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings(_env_file=None)
    message = str(info.value)
    assert message.startswith(variable) and words in message and "\n" not in message
    assert GOOD_SECRET not in message


def test_good_webhook_settings_and_the_anonymous_caller(monkeypatch):
    monkeypatch.setenv("WEBHOOKS", "anonymous=http://10.0.0.5/h, *=https://x.example/a%2Cb")
    monkeypatch.setenv("WEBHOOK_SECRET", GOOD_SECRET)
    settings = load_settings(_env_file=None)  # auth off: the one caller is `anonymous`
    assert [(e.name, e.url) for e in settings.webhooks] == [
        ("anonymous", "http://10.0.0.5/h"),
        ("*", "https://x.example/a%2Cb"),
    ]
    assert GOOD_SECRET in settings.secrets()  # the log scrubber knows it


def test_http_endpoint_is_warned_about_in_production(monkeypatch):
    from tests.fakeplivo import AUTH_ID, AUTH_TOKEN

    env = {
        "APP_ENV": "production",
        "PLIVO_AUTH_ID": AUTH_ID,
        "PLIVO_AUTH_TOKEN": AUTH_TOKEN,
        "PLIVO_SENDER_NUMBER": "+14155550000",
        "API_KEYS": API_KEYS,
        "WEBHOOKS": "alpha=http://hooks.internal/h,*=https://x.example/h",
        "WEBHOOK_SECRET": GOOD_SECRET,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    warnings = [w for w in load_settings(_env_file=None).startup_warnings() if "WEBHOOKS" in w]
    assert len(warnings) == 1 and "'alpha'" in warnings[0] and "http://" in warnings[0]


def test_python_m_app_refuses_with_one_line(tmp_path):
    env = {**base_env("http://127.0.0.1:9"), "WEBHOOKS": "*=https://x.example"}
    assert startup_refusal(env, tmp_path).startswith("configuration error: WEBHOOK_SECRET:")


# Metrics, text erasure, retention -------------------------------------------------------------
async def test_metrics_by_endpoint_and_outcome(hooked, client_for, receiver, fake_plivo):
    async with client_for(hooked(webhooks=hooks(receiver, alpha="/alpha", all="/all"))) as c:
        c.services.webhooks.uniform = lambda a, b: 1000.0  # no retry during the test
        receiver.status = 200
        await c.post("/api/mms/send", json=VALID, headers=A)
        await until(lambda: len(receiver.got()) == 2)
        await until(lambda: c.services.webhooks.in_flight == 0)
        receiver.status = 500
        await c.post("/api/mms/send", json=VALID, headers=A)
        await until(lambda: len(receiver.got()) == 4)
        await until(lambda: c.services.webhooks.in_flight == 0)
        deadline = time.monotonic() + 20
        while True:  # the backlog is reported after a claim, at most once a second
            c.services.webhooks.wake()
            text = (await c.get("/metrics")).text
            if "mms_webhook_pending 2.0" in text or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    assert 'mms_webhook_deliveries_total{endpoint="alpha",outcome="delivered"} 1.0' in text
    assert 'mms_webhook_deliveries_total{endpoint="*",outcome="retry"} 1.0' in text
    assert 'mms_webhook_deliveries_total{endpoint="*",outcome="failed"} 0.0' in text
    assert 'mms_webhook_attempt_duration_seconds_count{endpoint="alpha"} 2.0' in text
    assert "mms_webhook_pending 2.0" in text
    assert "mms_webhook_oldest_pending_age_seconds" in text


async def test_inbound_text_is_erased_after_24_hours_while_pending(
    hooked, client_for, receiver, fake_plivo
):
    receiver.status = 500
    async with client_for(hooked()) as client:
        await inbound(client, "secret words")
        await until(lambda: len(receiver.got("/all")) == 1)
        await until(lambda: client.services.webhooks.in_flight == 0)
        [row] = await deliveries(client, webhook_deliveries.c.type == "message.inbound")
        assert row["text"] == "secret words" and row["status"] == "pending"
        day_ago = row["created_at"] - 24 * 3600 * 1000 - 1
        await client.services.db.write(
            FunctionOp(
                lambda c: c.execute(
                    update(webhook_deliveries)
                    .where(webhook_deliveries.c.id == row["id"])
                    .values(created_at=day_ago)
                )
            )
        )
        client.services.webhooks._next_erase = 0.0  # the sweep runs at the next claim
        deadline = time.monotonic() + 20
        while row["text"] is not None and time.monotonic() < deadline:
            client.services.webhooks.wake()
            await asyncio.sleep(0.1)
            [row] = await deliveries(client, webhook_deliveries.c.id == row["id"])
    assert row["text"] is None and row["status"] == "pending"
    assert "secret words" in receiver.got("/all")[0].payload["data"]["text"]


async def test_retention_purges_old_deliveries(store_url):
    db = Database(store_url)
    await db.start()
    try:
        targets = store.Targets(everything=True)
        old, new = 1_000, int(time.time() * 1000)
        for at in (old, new):
            event = store.Event(type=store.OPTOUT_CHANGED, at=at, data={"n": at})
            await db.write(FunctionOp(lambda c, e=event: store.add_events(c, targets, [e])))
        await purge_once(db, retention_days=1)
        async with db.read() as conn:
            left = [r.created_at for r in await conn.execute(select(webhook_deliveries))]
    finally:
        await db.close()
    assert left == [new]


# Durability: a crash between the commit and the delivery ----------------------------------------
@pytest.mark.e2e
def test_event_committed_before_a_kill_is_delivered_after_restart(tmp_path, fake_plivo):
    """The service commits the event, cannot deliver it (the endpoint is down), is killed
    (SIGKILL), and delivers it after the restart. The kill waits for the first attempt's
    outcome: killed between a claim and its outcome, the event would wait out the claim's
    30-s lease instead (test_an_attempt_cut_short_is_attempted_again)."""
    receiver = Receiver().start()
    port = receiver.port
    receiver.stop()  # the endpoint is down: the first process cannot deliver
    env = base_env(
        fake_plivo.url,
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/mms.db",
        WEBHOOKS=f"*=http://127.0.0.1:{port}/hook",
        WEBHOOK_SECRET=SECRET,
    )
    first = Server(dict(env), tmp_path / "first.log").wait_healthy()
    try:
        response = http_post(f"{first.url}/api/mms/send", json=VALID, timeout=30)
        assert response.status_code == 200
        deadline = time.monotonic() + 10
        while "webhook_attempt_failed" not in first.logs() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "webhook_attempt_failed" in first.logs()
    finally:
        first.proc.send_signal(signal.SIGKILL)
        first.kill()
    receiver = Receiver().start(port=port)
    second = Server(dict(env), tmp_path / "second.log").wait_healthy()
    try:
        deadline = time.monotonic() + 60
        while not receiver.got() and time.monotonic() < deadline:
            time.sleep(0.1)
        got = receiver.got()
    finally:
        second.terminate()
        receiver.stop()
    assert len(got) >= 1, second.logs()
    assert got[0].payload["data"]["messageUuid"] == response.json()["messageUuid"][0]
    assert got[0].error is None


@pytest.mark.e2e
def test_sigterm_lets_an_attempt_in_flight_finish(tmp_path, fake_plivo):
    """SIGTERM while an attempt waits for a slow endpoint: no new claims, the attempt
    completes within the grace period, the delivery is recorded, the process exits 0."""
    receiver = Receiver().start()
    receiver.hanging = True
    url = f"sqlite+aiosqlite:///{tmp_path}/mms.db"
    env = base_env(
        fake_plivo.url,
        DATABASE_URL=url,
        WEBHOOKS=f"*={receiver.url('/hook')}",
        WEBHOOK_SECRET=SECRET,
    )
    server = Server(env, tmp_path / "server.log").wait_healthy()
    try:
        assert http_post(f"{server.url}/api/mms/send", json=VALID, timeout=30).status_code == 200
        deadline = time.monotonic() + 30
        while not receiver.got() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert receiver.got(), server.logs()
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert server.proc.poll() is None  # still waiting for the attempt in flight
        receiver.unhang()
        code = server.terminate(timeout=30)
    finally:
        server.kill()
        receiver.stop()
    assert code == 0, server.logs()

    async def rows():
        db = Database(url)
        await db.start()
        try:
            async with db.read() as conn:
                return [dict(r._mapping) for r in await conn.execute(select(webhook_deliveries))]
        finally:
            await db.close()

    [row] = asyncio.run(rows())
    assert row["status"] == "delivered" and row["attempts"] == 1
    assert len(receiver.got()) == 1
    assert "webhook_delivered" in server.logs()


# Two replicas on one PostgreSQL -----------------------------------------------------------------
async def test_two_replicas_deliver_each_event_once(
    settings_factory, client_for, receiver, fake_plivo, postgres_url
):
    settings = settings_factory(
        database_url=postgres_url,
        api_keys=API_KEYS,
        webhooks=hooks(receiver, alpha="/alpha"),
        webhook_secret=SECRET,
    )
    async with client_for(settings) as one, client_for(settings) as two:
        sends = [
            (one if i % 2 else two).post(
                "/api/mms/send", json={**VALID, "to": f"+1415555{4000 + i}"}, headers=A
            )
            for i in range(40)
        ]
        responses = await asyncio.gather(*sends)
        assert all(r.status_code == 200 for r in responses)
        await until(lambda: len(receiver.got()) >= 40, timeout=30)
        await asyncio.sleep(1.5)  # a second delivery of any of them would arrive by now
        rows = await deliveries(one)
    ids = [r.id for r in receiver.got()]
    assert len(ids) == 40 and len(set(ids)) == 40  # each event once
    assert {r["status"] for r in rows} == {"delivered"} and len(rows) == 40
    assert all(r.error is None for r in receiver.got())


# Shutdown: attempts in flight finish ------------------------------------------------------------
async def test_stop_lets_an_attempt_in_flight_finish(hooked, client_for, receiver, fake_plivo):
    receiver.hanging = True
    async with client_for(hooked(webhooks=hooks(receiver, alpha="/alpha"))) as client:
        worker = client.services.webhooks
        await client.post("/api/mms/send", json=VALID, headers=A)
        await until(lambda: len(receiver.got()) == 1)
        stopping = asyncio.create_task(worker.stop(grace_seconds=10))
        await asyncio.sleep(0.3)
        assert not stopping.done()  # waiting for the attempt in flight
        receiver.unhang()
        await asyncio.wait_for(stopping, 10)
        [row] = await deliveries(client)
    assert row["status"] == "delivered" and row["claimed_until"] is None


async def test_an_attempt_cut_short_is_attempted_again(hooked, client_for, receiver, fake_plivo):
    receiver.hanging = True
    settings = hooked(webhooks=hooks(receiver, alpha="/alpha"))
    async with client_for(settings) as client:
        await client.post("/api/mms/send", json=VALID, headers=A)
        await until(lambda: len(receiver.got()) == 1)
        await client.services.webhooks.stop(grace_seconds=0.2)  # past the grace: cut short
        [row] = await deliveries(client)
        assert row["status"] == "pending" and row["claimed_until"] is not None  # lease kept
        # Its lease runs out: the next worker takes it again (the clock moved past it).
        receiver.unhang()
        receiver.hanging = False
    async with client_for(settings) as client:
        worker = client.services.webhooks
        worker.clock = lambda: time.time() + 31
        worker.wake()
        await until(lambda: len(receiver.got()) == 2)
        await until(lambda: worker.in_flight == 0)
        [row] = await deliveries(client)
    assert row["status"] == "delivered"
    assert receiver.got()[0].id == receiver.got()[1].id
