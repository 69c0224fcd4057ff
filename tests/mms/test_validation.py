"""Bad input gets 422 validation_error (or 413), naming the field — row by row."""

from __future__ import annotations

import pytest

from tests.helpers import VALID


def _with(**changes):
    body = {**VALID, **changes}
    return {k: v for k, v in body.items() if v is not _DROP}


_DROP = object()

BAD_BODIES = [
    ("empty object", {}, "to"),
    ("to missing", _with(to=_DROP), "to"),
    ("media_urls missing", _with(media_urls=_DROP), "media_urls"),
    ("text missing", _with(text=_DROP), "text"),
    ("to is a number", _with(to=14155550100), "to"),
    ("to without plus", _with(to="14155550100"), "to"),
    ("to with spaces", _with(to="+1 415 555 0100"), "to"),
    ("to with dashes", _with(to="+1-415-555-0100"), "to"),
    ("to with letters", _with(to="+1415555ABCD"), "to"),
    ("to too long", _with(to="+1415555010012345"), "to"),
    ("to starts with +0", _with(to="+04155550100"), "to"),
    ("to with full-width digits", _with(to="+１４１５５５５０１００"), "to"),
    ("to with Arabic-Indic digits", _with(to="+١٤١٥٥٥٥٠١٠٠"), "to"),
    ("to in the UK", _with(to="+442071838750"), "to"),
    ("to in Puerto Rico (+1 but not US/CA)", _with(to="+17875550100"), "to"),
    ("to in Jamaica (+1 but not US/CA)", _with(to="+18765550100"), "to"),
    ("to not a valid NANP number", _with(to="+11234567890"), "to"),
    ("to empty", _with(to=""), "to"),
    ("to null", _with(to=None), "to"),
    ("to trailing newline", _with(to="+14155550100\n"), "to"),
    ("media_urls empty", _with(media_urls=[]), "media_urls"),
    (
        "media_urls eleven",
        _with(media_urls=[f"https://e.x/{i}.png" for i in range(11)]),
        "media_urls",
    ),
    ("media_urls a string", _with(media_urls="https://e.x/a.png"), "media_urls"),
    ("media_urls an object", _with(media_urls={"a": "https://e.x/a.png"}), "media_urls"),
    ("media url ftp", _with(media_urls=["ftp://e.x/a.png"]), "media_urls.0"),
    ("media url relative", _with(media_urls=["/a.png"]), "media_urls.0"),
    ("media url without scheme", _with(media_urls=["example.com/a.png"]), "media_urls.0"),
    ("media url too long", _with(media_urls=["https://e.x/" + "a" * 2040]), "media_urls.0"),
    ("media url with a space", _with(media_urls=["https://e.x/a b.png"]), "media_urls.0"),
    ("media url a number", _with(media_urls=[5]), "media_urls.0"),
    ("media url javascript:", _with(media_urls=["javascript:alert(1)"]), "media_urls.0"),
    ("media url without host", _with(media_urls=["http://"]), "media_urls.0"),
    ("second media url bad", _with(media_urls=["https://e.x/a.png", "nope"]), "media_urls.1"),
    ("text empty", _with(text=""), "text"),
    ("text too long", _with(text="x" * 1601), "text"),
    ("text a number", _with(text=123), "text"),
    ("text null", _with(text=None), "text"),
    ("text a list", _with(text=["hi"]), "text"),
    ("extra field", _with(src="+14155550000"), "src"),
    ("extra field type", _with(type="sms"), "type"),
    ("body an array", [VALID], "body"),
    ("body a string", "hello", "body"),
    ("body null", None, "body"),
]


@pytest.mark.parametrize(("name", "body", "field"), BAD_BODIES, ids=[r[0] for r in BAD_BODIES])
async def test_bad_body_is_422(client, fake_plivo, name, body, field):
    response = await client.post("/api/mms/send", json=body)
    problem = response.json()
    assert response.status_code == 422, problem
    assert response.headers["content-type"] == "application/problem+json"
    assert problem["code"] == "validation_error"
    assert problem["status"] == 422
    assert problem["title"] == "Request validation failed"
    assert field in [e["field"] for e in problem["errors"]], problem["errors"]
    assert all(set(e) == {"field", "message"} for e in problem["errors"])
    assert fake_plivo.sends() == []


BAD_RAW = [
    ("malformed JSON", b'{"to": ', "application/json"),
    ("text/plain body", b"to=+14155550100", "text/plain"),
    (
        "form body",
        b"to=%2B14155550100&text=hi&media_urls=https://e.x/a.png",
        "application/x-www-form-urlencoded",
    ),
    ("no body at all", b"", "application/json"),
    ("JSON without content type", b'{"to": "+14155550100"}', None),
    ("not UTF-8", b'{"to": "\xff\xfe"}', "application/json"),
]


@pytest.mark.parametrize(("name", "content", "ctype"), BAD_RAW, ids=[r[0] for r in BAD_RAW])
async def test_unreadable_body_is_422(client, fake_plivo, name, content, ctype):
    headers = {"Content-Type": ctype} if ctype else {}
    response = await client.post("/api/mms/send", content=content, headers=headers)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"
    assert fake_plivo.sends() == []


async def test_limits_at_the_edges_are_accepted(client, fake_plivo):
    """Exactly 10 URLs of 2048 characters and 1600 characters of text pass."""
    url = "https://e.x/" + "a" * (2048 - len("https://e.x/"))
    body = {"to": "+16135550123", "media_urls": [url] * 10, "text": "é" * 1600}
    response = await client.post("/api/mms/send", json=body)
    assert response.status_code == 200, response.text
    assert fake_plivo.sends()[0].json["media_urls"] == [url] * 10


async def test_body_over_64k_is_413_before_reading(client, fake_plivo):
    body = b'{"text": "' + b"x" * (64 * 1024) + b'"}'
    response = await client.post(
        "/api/mms/send", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    assert fake_plivo.sends() == []


async def test_chunked_body_over_64k_is_413(client, fake_plivo):
    """No Content-Length: the limit is enforced while the body streams in."""

    async def chunks():
        for _ in range(20):
            yield b"x" * 4096

    response = await client.post(
        "/api/mms/send", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/nope", 404, "not_found"),
        ("PATCH", "/api/mms/send", 405, "method_not_allowed"),
        ("DELETE", "/health", 405, "method_not_allowed"),
        ("PUT", "/api/mms/send", 405, "method_not_allowed"),
    ],
)
async def test_routing_errors_are_problems(client, method, path, status, code):
    response = await client.request(method, path)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code


@pytest.mark.parametrize(
    ("path", "allow"),
    [
        ("/api/optouts", "GET, POST"),  # one route per method at this path
        ("/api/mms/send", "POST"),
        ("/api/mms/status", "POST"),
    ],
)
async def test_405_allow_names_every_method_of_the_path(client, path, allow):
    response = await client.request("PATCH", path)
    assert response.status_code == 405
    assert response.headers["allow"] == allow
