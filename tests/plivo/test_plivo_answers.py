"""Values from Plivo are bounded (row 9): a Retry-After is parsed strictly and capped, and
an answer the store cannot hold as it is never costs the message's row."""

from __future__ import annotations

import email.utils

import pytest

from app.plivo.client import MAX_RETRY_AFTER_SECONDS, parse_retry_after
from tests import fakeplivo as fp
from tests.helpers import VALID

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("7", 7.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("²", None),  # a digit to str.isdigit(), not to float()
        ("７", None),  # fullwidth seven
        ("2.5", None),
        ("-1", None),
        ("1e3", None),
        ("", None),
        (None, None),
        ("2300000000", MAX_RETRY_AFTER_SECONDS),
        ("9" * 40, MAX_RETRY_AFTER_SECONDS),
        (email.utils.formatdate(NOW + 120, usegmt=True), 120.0),
        (email.utils.formatdate(NOW + 86_400, usegmt=True), MAX_RETRY_AFTER_SECONDS),
        (email.utils.formatdate(NOW - 60, usegmt=True), 0.0),
        ("Sunday, 06-Nov-94 08:49:37 GMT", 0.0),  # RFC 850, obsolete but allowed
        ("Sun Nov  6 08:49:37 1994", 0.0),  # asctime
        ("Sun, 06 Nov 1994 08:49:37 +0000", None),  # not an HTTP-date
        ("tomorrow", None),
    ],
)
def test_row9_retry_after_is_parsed_strictly_and_capped(value, seconds):
    assert parse_retry_after(value, now=NOW) == seconds


async def test_row9_unparseable_retry_after_is_a_503_not_an_unknown_outcome(client, fake_plivo):
    """Row 9: `Retry-After: ²` made the client fail (502, stored as unknown) although Plivo
    certainly did not take the message. It counts as absent: 503, the default wait, and no
    row (nothing to reconcile)."""
    fake_plivo.script(*[fp.status(503, "busy", retry_after="²")] * 3)
    response = await client.post("/api/mms/send", json=VALID)
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "upstream_unavailable"
    assert response.headers["retry-after"] == "2"
    assert (await client.get("/api/mms")).json()["items"] == []


async def test_row9_huge_retry_after_is_capped_before_the_caller(client, fake_plivo):
    """Row 9: Plivo's `Retry-After: 2300000000` reached the caller as it was."""
    fake_plivo.script(fp.status(429, "slow down", retry_after="2300000000"))
    response = await client.post("/api/mms/send", json=VALID)
    assert response.status_code == 503 and response.json()["code"] == "upstream_rate_limited"
    assert response.headers["retry-after"] == "300"
    assert len(fake_plivo.sends()) == 1  # no retry waits 300 s inside the deadline


@pytest.fixture
async def app(settings_factory, client_for, store_url):
    async with client_for(settings_factory(database_url=store_url)) as c:
        yield c


async def test_row9_uuid_too_long_for_the_column_is_stored_as_unknown(app, fake_plivo):
    """Row 9: a message_uuid over 64 characters was answered 200 with no row on PostgreSQL.
    It is an answer the service cannot use: 502 `upstream_error` (the message may be
    queued), stored without a uuid as an unknown outcome for reconciliation."""
    fake_plivo.script(fp.ok(uuid="u" * 65))
    response = await app.post("/api/mms/send", json=VALID)
    assert response.status_code == 502 and response.json()["code"] == "upstream_error"
    [row] = (await app.get("/api/mms")).json()["items"]
    assert (row["status"], row["messageUuid"], row["to"]) == ("unknown", None, VALID["to"])


@pytest.mark.parametrize("keyed", [False, True], ids=["no-key", "idempotency-key"])
async def test_row9_repeated_uuid_keeps_the_second_row(app, fake_plivo, keyed):
    """Row 9: Plivo answering a message_uuid it already gave another message left the
    second send answered 200 with no row (the uuid is unique). The row is kept, without
    the uuid, as an unknown outcome that reconciliation settles."""
    repeated = "8777463d-0b17-437b-9692-612345678901"
    fake_plivo.script(fp.ok(uuid=repeated), fp.ok(uuid=repeated))
    headers = {"Idempotency-Key": "repeat-1"} if keyed else {}
    assert (await app.post("/api/mms/send", json=VALID)).status_code == 200
    second = await app.post("/api/mms/send", json={**VALID, "text": "two"}, headers=headers)
    assert second.status_code == 200
    rows = {r["messageUuid"]: r for r in (await app.get("/api/mms")).json()["items"]}
    assert rows.keys() == {repeated, None}
    assert (rows[repeated]["status"], rows[None]["status"]) == ("queued", "unknown")
    second_row = rows[None]
    if keyed:  # the key's answer was recorded with the row: a retry replays it
        assert second_row["idempotencyKey"] == "repeat-1"
        again = await app.post("/api/mms/send", json={**VALID, "text": "two"}, headers=headers)
        assert (again.status_code, again.json()) == (200, second.json())
        assert len(fake_plivo.sends()) == 2
