"""Hostile input: control characters, non-canonical numbers, forged cursors, IPv6 buckets.

Each test names the row of the security review it guards (docs/security.md, "Input and
configuration"). The store-touching ones run on SQLite and PostgreSQL: a value that one
store accepts and the other refuses (NUL in a PostgreSQL text column) must be a 422 on
both, before any store write or Plivo call.
"""

from __future__ import annotations

import base64

import pytest

from tests.helpers import API_KEYS, KEY_A, VALID, asgi_client

A = {"X-API-Key": KEY_A}
MESSAGE_ID = "0123456789abcdef0123456789abcdef"  # the form of the service's own ids


@pytest.fixture
def keyed(settings_factory, store_url):
    return settings_factory(api_keys=API_KEYS, database_url=store_url, store_message_text=True)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _assert_422(response, field: str) -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "validation_error"
    assert field in [e["field"] for e in body["errors"]], body


# Row 5: control characters -------------------------------------------------------------------
BODIES_WITH_CONTROL_CHARACTERS = [
    ({**VALID, "text": "hello\x00world"}, "text"),
    ({**VALID, "text": "\x00"}, "text"),
    ({**VALID, "text": "bell\x07"}, "text"),
    ({**VALID, "text": "escape \x1b[31m red"}, "text"),
    ({**VALID, "text": "vertical\x0btab"}, "text"),
    ({**VALID, "to": "+14155550100\x00"}, "to"),
    ({**VALID, "to": "\x00+14155550100"}, "to"),
    ({**VALID, "media_urls": ["https://example.com/a\x00.png"]}, "media_urls.0"),
]


@pytest.mark.parametrize(("body", "field"), BODIES_WITH_CONTROL_CHARACTERS)
async def test_row5_control_characters_in_the_body_are_422(
    keyed, client_for, fake_plivo, body, field
):
    """Row 5: NUL and other C0 controls in any body field are 422 before Plivo, on both
    stores; the Idempotency-Key used with such a body stays free (no 503 forever)."""
    async with client_for(keyed) as client:
        refused = await client.post(
            "/api/mms/send", json=body, headers={**A, "Idempotency-Key": "ctl"}
        )
        retried = await client.post(
            "/api/mms/send", json=VALID, headers={**A, "Idempotency-Key": "ctl"}
        )
    _assert_422(refused, field)
    assert retried.status_code == 200, retried.text
    assert len(fake_plivo.sends()) == 1


async def test_row5_tab_cr_and_lf_are_allowed_in_text(keyed, client_for, fake_plivo):
    """Row 5: the three whitespace controls a message may hold are sent and stored."""
    text = "line one\r\nline two\n\tindented"
    async with client_for(keyed) as client:
        sent = await client.post("/api/mms/send", json={**VALID, "text": text}, headers=A)
        assert sent.status_code == 200, sent.text
        listed = (await client.get("/api/mms", headers=A)).json()["items"]
    assert [m["messageUuid"] for m in listed] == sent.json()["messageUuid"]
    assert fake_plivo.sends()[0].json["text"] == text


def test_row5_text_rule_allows_exactly_tab_cr_lf():
    """Row 5: every C0 control but tab, LF and CR is refused in `text`."""
    from app.mms.schemas import message_text

    allowed = {"\t", "\n", "\r"}
    for code in range(0x20):
        char = chr(code)
        if char in allowed:
            assert message_text(f"a{char}b") == f"a{char}b"
        else:
            with pytest.raises(ValueError):
                message_text(f"a{char}b")
    assert message_text("plain ünïcode ✓") == "plain ünïcode ✓"


QUERIES_WITH_CONTROL_CHARACTERS = [
    ({"to": "\x00"}, "to"),
    ({"to": "+1415555\x000100"}, "to"),
    ({"idempotencyKey": "key\x00"}, "idempotencyKey"),
    ({"idempotencyKey": "\x00"}, "idempotencyKey"),
    ({"idempotencyKey": "tab\there"}, "idempotencyKey"),
    ({"cursor": "\x00"}, "cursor"),
    ({"cursor": _b64(f"1700000000000:{MESSAGE_ID}".encode()) + "\x00"}, "cursor"),
    ({"cursor": _b64(b"1700000000000:\x00")}, "cursor"),
    ({"status": "queued\x00"}, "status"),
    ({"since": "2026-01-01T00:00:00\x00Z"}, "since"),
    ({"limit": "1\x00"}, "limit"),
]


@pytest.mark.parametrize(("query", "field"), QUERIES_WITH_CONTROL_CHARACTERS)
async def test_row5_control_characters_in_query_parameters_are_422(
    keyed, client_for, fake_plivo, query, field
):
    """Row 5: NUL in `?to=`, `?idempotencyKey=`, a cursor... is 422 naming the parameter
    (it was a 503: PostgreSQL refused the query)."""
    async with client_for(keyed) as client:
        await client.post("/api/mms/send", json=VALID, headers=A)
        response = await client.get("/api/mms", params=query, headers=A)
    _assert_422(response, field)


@pytest.mark.parametrize("ident", ["%00", "abc%00def", MESSAGE_ID + "%00", "%00" * 40])
async def test_row5_nul_in_a_message_id_is_404(keyed, client_for, fake_plivo, ident):
    """Row 5: a malformed id is 404 `not_found` by contract, NUL included, on both stores."""
    async with client_for(keyed) as client:
        response = await client.get(f"/api/mms/{ident}", headers=A)
    assert response.status_code == 404, response.text
    assert response.json()["code"] == "not_found"


@pytest.mark.parametrize("key", ["a\x00b", "\x00", "tab\tkey", "del\x7f"])
async def test_row5_idempotency_key_header_refuses_control_characters(
    keyed, client_for, fake_plivo, key
):
    """Row 5: the Idempotency-Key header is printable ASCII only (httpx passes it raw)."""
    async with client_for(keyed) as client:
        response = await client.post(
            "/api/mms/send", json=VALID, headers={**A, "Idempotency-Key": key}
        )
    _assert_422(response, "Idempotency-Key")
    assert fake_plivo.sends() == []


# Row 6: canonical numbers --------------------------------------------------------------------
@pytest.mark.parametrize("number", ["+112015550177", "+1120155501770"])
async def test_row6_non_canonical_number_is_422(settings_factory, client_for, fake_plivo, number):
    """Row 6: libphonenumber reads `+112015550177` as +12015550177; only the canonical
    spelling is accepted, so one recipient is one per-destination bucket."""
    settings = settings_factory(rate_limit_per_destination="1/hour")
    async with client_for(settings) as client:
        canonical = await client.post("/api/mms/send", json={**VALID, "to": "+12015550177"})
        odd = await client.post("/api/mms/send", json={**VALID, "to": number})
    assert canonical.status_code == 200, canonical.text
    _assert_422(odd, "to")
    assert [c.json["dst"] for c in fake_plivo.sends()] == ["+12015550177"]


def test_row6_number_rule_compares_with_libphonenumbers_e164():
    """Row 6: accepted exactly when libphonenumber's E.164 form equals the input."""
    import phonenumbers

    from app.mms.schemas import us_ca_number

    for number in ["+12015550177", "+14155550100", "+16135550123"]:
        parsed = phonenumbers.parse(number, None)
        assert phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164) == number
        assert us_ca_number(number) == number
    with pytest.raises(ValueError, match=r"canonical E\.164 form \(\+12015550177\)"):
        us_ca_number("+112015550177")


async def test_row6_listing_filter_applies_the_same_rule(keyed, client_for, fake_plivo):
    """Row 6: `?to=` takes the canonical form only; any other spelling is a 422, never a 5xx."""
    async with client_for(keyed) as client:
        await client.post("/api/mms/send", json={**VALID, "to": "+12015550177"}, headers=A)
        found = await client.get("/api/mms", params={"to": "+12015550177"}, headers=A)
        responses = [
            await client.get("/api/mms", params={"to": to}, headers=A)
            for to in ["+112015550177", "12015550177", "+1201555017７", "+1" + "9" * 14]
        ]
    assert found.status_code == 200 and len(found.json()["items"]) == 1
    for response in responses:
        _assert_422(response, "to")


# Row 8: cursors ------------------------------------------------------------------------------
HOSTILE_CURSORS = {
    "huge int": _b64(f"{10**30}:{MESSAGE_ID}".encode()),
    "just over BIGINT": _b64(f"{2**63}:{MESSAGE_ID}".encode()),
    "negative": _b64(f"-1:{MESSAGE_ID}".encode()),
    "non-base64": "!!!",
    "base64 of garbage": _b64(b"\xff\xfe\x00\x01garbage"),
    "NUL raw": "\x00",
    "NUL in id": _b64(b"1700000000000:" + MESSAGE_ID[:-1].encode() + b"\x00"),
    "no separator": _b64(b"1700000000000"),
    "empty id": _b64(b"1700000000000:"),
    "id too long": _b64(f"1700000000000:{MESSAGE_ID * 3}".encode()),
    "id not hex": _b64(f"1700000000000:{'z' * 32}".encode()),
    "three parts": _b64(f"1:2:{MESSAGE_ID}".encode()),
    "non-ASCII digits": _b64(f"١٧٠٠:{MESSAGE_ID}".encode()),
    "underscored int": _b64(f"1_700:{MESSAGE_ID}".encode()),
    "spaced int": _b64(f" 1700:{MESSAGE_ID}".encode()),
    "plus sign": _b64(f"+1700:{MESSAGE_ID}".encode()),
    "stray characters": _b64(f"1700000000000:{MESSAGE_ID}".encode()) + "!*",
    "padded": _b64(f"1700000000000:{MESSAGE_ID}".encode()) + "==",
    "empty": "",
}


@pytest.mark.parametrize("cursor", HOSTILE_CURSORS.values(), ids=HOSTILE_CURSORS.keys())
async def test_row8_hostile_cursors_are_422(keyed, client_for, fake_plivo, cursor):
    """Row 8: a huge integer was a 500 on SQLite (OverflowError) and a 503 on PostgreSQL;
    every malformed cursor is a 422 naming `cursor`."""
    async with client_for(keyed) as client:
        await client.post("/api/mms/send", json=VALID, headers=A)
        response = await client.get("/api/mms", params={"cursor": cursor}, headers=A)
    _assert_422(response, "cursor")


async def test_row8_cursor_bounds_are_the_columns_bounds(keyed, client_for, fake_plivo):
    """Row 8: the largest BIGINT is still a cursor (an empty page or all, never an error);
    a real cursor round-trips."""
    async with client_for(keyed) as client:
        for _ in range(2):
            await client.post("/api/mms/send", json=VALID, headers=A)
        largest = _b64(f"{2**63 - 1}:{MESSAGE_ID}".encode())
        everything = await client.get("/api/mms", params={"cursor": largest}, headers=A)
        first = (await client.get("/api/mms", params={"limit": 1}, headers=A)).json()
        second = await client.get("/api/mms", params={"cursor": first["nextCursor"]}, headers=A)
    assert everything.status_code == 200 and len(everything.json()["items"]) == 2
    assert second.status_code == 200 and len(second.json()["items"]) == 1


def test_row8_decode_cursor_accepts_only_what_encode_cursor_makes():
    from app.store.repository import decode_cursor, encode_cursor

    assert decode_cursor(encode_cursor(1_700_000_000_000, MESSAGE_ID)) == (
        1_700_000_000_000,
        MESSAGE_ID,
    )
    assert decode_cursor(encode_cursor(0, MESSAGE_ID)) == (0, MESSAGE_ID)
    for name, cursor in HOSTILE_CURSORS.items():
        assert decode_cursor(cursor) is None, name


# Row 13: IPv6 clients by /64 -----------------------------------------------------------------
async def test_row13_ipv6_clients_are_limited_per_64(settings_factory, client_for, fake_plivo):
    """Row 13: two addresses in one /64 share one per-IP bucket; another /64 has its own;
    an IPv4-mapped IPv6 address is its IPv4 address."""
    settings = settings_factory(rate_limit="1/minute")
    async with client_for(settings) as client:
        app = client.app_running

        async def post_from(ip: str) -> int:
            async with asgi_client(app, ip) as c:
                return (await c.post("/api/mms/send", json={})).status_code

        assert await post_from("2001:db8:1:2::1") == 422  # counted, then refused by validation
        assert await post_from("2001:db8:1:2:ffff:ffff:ffff:fffe") == 429
        assert await post_from("2001:db8:1:3::1") == 422  # the next /64: a bucket of its own
        assert await post_from("10.0.0.7") == 422
        assert await post_from("::ffff:10.0.0.7") == 429
        assert await post_from("10.0.0.8") == 422


def test_row13_client_key():
    from app.ratelimit import client_key

    assert client_key("203.0.113.9") == "203.0.113.9"
    assert client_key("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert client_key("2001:DB8:1:2::9") == "2001:db8:1:2::/64"
    assert client_key("::ffff:203.0.113.9") == "203.0.113.9"
    assert client_key("fe80::1%eth0") == "fe80::/64"
    assert client_key("unknown") == "unknown"
