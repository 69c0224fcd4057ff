"""Reconciliation: messages without a final status are looked up through Plivo's API."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from tests import fakeplivo as fp
from tests.helpers import VALID


async def eventually(probe, timeout=15.0):
    """Poll `probe` (async, returns a truthy value when done) — generous, never a speed test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await probe()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


@pytest.fixture
def fast(settings_factory, store_url, fast_reconciler):
    def make(**overrides):
        values = {"database_url": store_url, "reconcile_after_seconds": 0, "reconcile_rate": 50}
        return settings_factory(**{**values, **overrides})

    return make


async def test_message_get_moves_a_stale_message(fast, client_for, fake_plivo):
    async with client_for(fast()) as client:
        message_uuid = (await client.post("/api/mms/send", json=VALID)).json()["messageUuid"][0]
        fake_plivo.mdrs[message_uuid].message_state = "delivered"

        async def delivered():
            return (await client.get(f"/api/mms/{message_uuid}")).json()["status"] == "delivered"

        await eventually(delivered)
        await asyncio.sleep(0.5)  # a final status is not looked up again
        message = (await client.get(f"/api/mms/{message_uuid}")).json()
    gets = [c for c in fake_plivo.lookups() if c.path.endswith(f"/{message_uuid}/")]
    assert len(gets) == 1
    assert [e["status"] for e in message["events"]] == ["delivered"]


async def test_failed_lookup_error_code_is_kept(fast, client_for, fake_plivo):
    async with client_for(fast()) as client:
        message_uuid = (await client.post("/api/mms/send", json=VALID)).json()["messageUuid"][0]
        mdr = fake_plivo.mdrs[message_uuid]
        mdr.message_state, mdr.error_code = "failed", "900"

        async def failed():
            body = (await client.get(f"/api/mms/{message_uuid}")).json()
            return body if body["status"] == "failed" else None

        message = await eventually(failed)
    assert message["errorCode"] == "900" and message["errorMessage"] == "Insufficient credit"


async def test_lookups_are_paced_by_reconcile_rate(fast, client_for, fake_plivo):
    """RECONCILE_RATE=4: lookups leave on slots 1/4 s apart. Measured where the fake Plivo
    receives them, so one may arrive late and the next on time: the span of five is at least
    four slots, and no two come together."""
    async with client_for(fast(reconcile_rate=4)) as client:
        for i in range(5):
            await client.post("/api/mms/send", json={**VALID, "to": f"+1415555020{i}"})

        async def five_lookups():
            return len(fake_plivo.lookups()) >= 5

        await eventually(five_lookups)
    times = [c.at for c in fake_plivo.lookups()][:5]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert times[-1] - times[0] >= 4 * 0.25 - 0.05, gaps
    assert min(gaps) >= 0.05, gaps  # unpaced, they would come milliseconds apart


async def test_gives_up_and_settles_as_it_is(fast, client_for, fake_plivo):
    """After RECONCILE_GIVE_UP_HOURS a `sent` message stays `sent` and is not asked again."""
    async with client_for(fast(reconcile_give_up_hours=1 / 3600)) as client:
        message_uuid = (await client.post("/api/mms/send", json=VALID)).json()["messageUuid"][0]
        fake_plivo.mdrs[message_uuid].message_state = "sent"

        async def settled():
            db = client.services.db
            from sqlalchemy import select

            from app.store.tables import messages

            async with db.read() as conn:
                row = (
                    await conn.execute(
                        select(messages).where(messages.c.message_uuid == message_uuid)
                    )
                ).first()
            return row if row.next_check_at is None else None

        row = await eventually(settled)
        lookups = len(fake_plivo.lookups())
        await asyncio.sleep(0.5)  # five idle polls
    assert row.status == "sent"
    assert len(fake_plivo.lookups()) == lookups  # no more lookups


async def test_unknown_outcome_is_found_in_plivos_message_list(fast, client_for, fake_plivo):
    """Accepted by Plivo but the answer was lost: the list API finds it; uuid adopted."""
    fake_plivo.script(fp.accept_then_drop())
    async with client_for(fast()) as client:
        assert (await client.post("/api/mms/send", json=VALID)).status_code == 502
        [plivo_uuid] = list(fake_plivo.mdrs)
        fake_plivo.mdrs[plivo_uuid].message_state = "delivered"

        async def adopted():
            items = (await client.get("/api/mms")).json()["items"]
            return items if items and items[0]["messageUuid"] else None

        items = await eventually(adopted)
        await eventually(lambda: _status_is(client, plivo_uuid, "delivered"))
    assert items[0]["messageUuid"] == plivo_uuid
    assert any("to_number" in c.query for c in fake_plivo.lookups())


async def test_dropped_after_sending_is_502_once_then_reconciled(fast, client_for, fake_plivo):
    """Plivo queued it but the answer was lost: 502 once; reconciliation finds it in the
    list; the key's replay is still the 502, and nothing is sent twice."""
    keyed = {"Idempotency-Key": "dropped"}
    fake_plivo.script(fp.accept_then_drop())
    async with client_for(fast()) as client:
        response = await client.post("/api/mms/send", json=VALID, headers=keyed)
        assert response.status_code == 502 and response.json()["code"] == "upstream_error"
        [plivo_uuid] = list(fake_plivo.mdrs)
        fake_plivo.mdrs[plivo_uuid].message_state = "delivered"

        async def resolved():
            listed = await client.get("/api/mms", params={"idempotencyKey": "dropped"})
            items = listed.json()["items"]
            return items and (items[0]["messageUuid"], items[0]["status"]) == (
                plivo_uuid,
                "delivered",
            )

        await eventually(resolved)
        replay = await client.post("/api/mms/send", json=VALID, headers=keyed)
    assert replay.status_code == 502 and replay.headers["idempotent-replayed"] == "true"
    assert len(fake_plivo.sends()) == 1


async def _status_is(client, message_uuid, status):
    return (await client.get(f"/api/mms/{message_uuid}")).json()["status"] == status


async def test_unknown_outcome_never_in_plivo_becomes_not_sent(fast, client_for, fake_plivo):
    fake_plivo.script(fp.drop())
    async with client_for(fast(reconcile_give_up_hours=1 / 3600)) as client:
        assert (await client.post("/api/mms/send", json=VALID)).status_code == 502

        async def not_sent():
            items = (await client.get("/api/mms")).json()["items"]
            return items[0]["status"] == "not_sent"

        await eventually(not_sent)
