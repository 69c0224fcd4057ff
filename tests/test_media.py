"""Media preflight: every rule against a real media server on loopback, the cache, where it
sits in a send, and the SSRF guard proven by a listening socket that sees no connection."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from app.config import ConfigError, load_settings
from app.errors import MediaRejected
from app.media import NOT_ALLOWED, Preflight, Verdict, VerdictCache, is_public
from tests.conftest import VALID
from tests.fakeplivo import FakePlivo

Route = Callable[[str, dict[str, str]], tuple[int, dict[str, str]]]


def media_file(content_type: str | None, length: int | None) -> Route:
    def route(method: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
        answer = {}
        if content_type is not None:
            answer["Content-Type"] = content_type
        if length is not None:
            answer["Content-Length"] = str(length)
        return 200, answer

    return route


def head_refused(content_type: str, total: int, status: int = 405) -> Route:
    """A CDN that refuses HEAD and answers a ranged GET with 206 and Content-Range."""

    def route(method: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
        if method == "HEAD":
            return status, {"Content-Length": "0"}
        assert headers.get("range") == "bytes=0-0"
        return 206, {
            "Content-Type": content_type,
            "Content-Length": "1",
            "Content-Range": f"bytes 0-0/{total}",
        }

    return route


def redirect(location: str, status: int = 302) -> Route:
    return lambda method, headers: (status, {"Location": location, "Content-Length": "0"})


class MediaServer:
    """A minimal HTTP/1.1 server: canned status and headers per path, every request kept."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.delays: dict[str, float] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.port = 0

    async def start(self) -> MediaServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self._server.close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def hits(self, path: str) -> int:
        return sum(1 for _, target, _ in self.requests if target == path)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            method, target, _ = head.split("\r\n", 1)[0].split(" ", 2)
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (
                    line.partition(":") for line in head.split("\r\n")[1:] if line
                )
            }
            self.requests.append((method, target, headers))
            await asyncio.sleep(self.delays.get(target, 0))
            route = self.routes.get(target)
            status, answer = (
                route(method, headers)
                if route
                else (404, {"Content-Type": "text/html", "Content-Length": "9"})
            )
            lines = [f"HTTP/1.1 {status} X", "Connection: close"]
            lines += [f"{name}: {value}" for name, value in answer.items()]
            body = b"x" if method == "GET" and status == 206 else b""
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


class AcceptRecorder:
    """A listening socket on loopback (IPv4 and, where available, IPv6) that counts the
    connections it accepts: the proof that a refused URL never reached anything."""

    def __init__(self) -> None:
        self.accepts = 0

    async def start(self) -> AcceptRecorder:
        self._servers = [await asyncio.start_server(self._accept, "127.0.0.1", 0)]
        self.port = self._servers[0].sockets[0].getsockname()[1]
        with contextlib.suppress(OSError):  # no IPv6 loopback: nothing connects to [::1]
            self._servers.append(await asyncio.start_server(self._accept, "::1", self.port))
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepts += 1
        writer.close()

    async def stop(self) -> None:
        for server in self._servers:
            server.close()


class HostsResolver(AbstractResolver):
    """A hosts file for tests: the names given, everything else through the system."""

    def __init__(self, hosts: dict[str, str]) -> None:
        self.hosts = hosts
        self.system = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host in self.hosts:
            address = self.hosts[host]
            return [
                {
                    "hostname": host,
                    "host": address,
                    "port": port,
                    "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
                    "proto": 0,
                    "flags": socket.AI_NUMERICHOST,
                }
            ]
        return await self.system.resolve(host, port, family)

    async def close(self) -> None:
        await self.system.close()


MAX = 2000
TOTAL = 2500


@pytest.fixture
async def media() -> AsyncIterator[MediaServer]:
    server = await MediaServer().start()
    server.routes.update(
        {
            "/ok.png": media_file("image/png", 1000),
            "/ok2.png": media_file("image/png", 1000),
            "/ok3.png": media_file("image/png", 1000),
            "/upper.jpg": media_file("Image/JPEG; charset=binary", 10),
            "/page.html": media_file("text/html; charset=utf-8", 10),
            "/untyped": media_file(None, 10),
            "/nolength.png": media_file("image/png", None),
            "/big.mp4": media_file("video/mp4", MAX + 1),
            "/exact.mp4": media_file("video/mp4", MAX),
            "/nohead.gif": head_refused("image/gif", 1234),
            "/nohead501.gif": head_refused("image/gif", 1234, status=501),
            "/nohead-big.gif": head_refused("image/gif", MAX * 3),
            "/r1": redirect("/r2", 301),
            "/r2": redirect("/r3", 302),
            "/r3": redirect("/ok.png", 307),
            "/s1": redirect("/s2"),
            "/s2": redirect("/s3"),
            "/s3": redirect("/s4"),
            "/s4": redirect("/ok.png"),
            "/slow.png": media_file("image/png", 10),
        }
    )
    server.delays["/slow.png"] = 5.0
    yield server
    await server.stop()


@pytest.fixture
async def recorder() -> AsyncIterator[AcceptRecorder]:
    server = await AcceptRecorder().start()
    yield server
    await server.stop()


@pytest.fixture
async def make_preflight() -> AsyncIterator[Callable[..., Any]]:
    built: list[Preflight] = []

    async def make(**overrides: Any) -> Preflight:
        values: dict[str, Any] = {"max_bytes": MAX, "max_total_bytes": TOTAL}
        values.update(overrides)
        preflight = await Preflight(**values).start()
        built.append(preflight)
        return preflight

    yield make
    for preflight in built:
        await preflight.aclose()


async def refusals(preflight: Preflight, urls: list[str]) -> list[dict[str, str]]:
    with pytest.raises(MediaRejected) as info:
        await preflight.check(urls, deadline=10)
    assert info.value.status == 422 and info.value.code == "media_rejected"
    return info.value.errors or []


# The rules --------------------------------------------------------------------------------
async def test_good_media_passes(make_preflight, media):
    preflight = await make_preflight(allow_private=True, max_total_bytes=MAX + 1010)
    await preflight.check(
        [media.url("/ok.png"), media.url("/upper.jpg"), media.url("/exact.mp4")], deadline=10
    )
    assert [m for m, _, _ in media.requests] == ["HEAD", "HEAD", "HEAD"]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/missing.png", "unreachable: the server answered HTTP 404"),
        ("/page.html", "type not supported: text/html"),
        ("/untyped", "type not supported: none given"),
        ("/nolength.png", "no length: the server sends no Content-Length"),
        ("/big.mp4", f"too large: {MAX + 1} bytes; at most {MAX} bytes per file"),
        ("/nohead-big.gif", f"too large: {MAX * 3} bytes"),
    ],
)
async def test_each_rule_names_the_url_and_why(make_preflight, media, path, message):
    preflight = await make_preflight(allow_private=True)
    errors = await refusals(preflight, [media.url("/ok.png"), media.url(path)])
    assert len(errors) == 1
    assert errors[0]["field"] == "media_urls[1]"
    assert errors[0]["message"].startswith(message)


async def test_a_refused_connection_is_unreachable_in_words(make_preflight):
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]  # closed again: nothing listens there
    preflight = await make_preflight(allow_private=True)
    [error] = await refusals(preflight, [f"http://127.0.0.1:{port}/a.png"])
    assert error == {"field": "media_urls[0]", "message": "unreachable: the connection failed"}


async def test_the_total_is_bounded(make_preflight, media):
    preflight = await make_preflight(allow_private=True)
    await preflight.check([media.url("/ok.png"), media.url("/ok2.png")], deadline=10)  # 2000
    urls = [media.url("/ok.png"), media.url("/ok2.png"), media.url("/ok3.png")]  # 3000
    [error] = await refusals(preflight, urls)
    assert error["field"] == "media_urls"
    assert error["message"] == f"too large together: 3000 bytes; at most {TOTAL} bytes per message"


async def test_several_bad_urls_are_reported_in_order(make_preflight, media):
    preflight = await make_preflight(allow_private=True)
    urls = [
        media.url("/big.mp4"),
        media.url("/ok.png"),
        media.url("/missing.png"),
        media.url("/page.html"),
        media.url("/nolength.png"),
    ]
    errors = await refusals(preflight, urls)
    assert [e["field"] for e in errors] == [
        "media_urls[0]",
        "media_urls[2]",
        "media_urls[3]",
        "media_urls[4]",
    ]
    assert [e["message"].split(":")[0] for e in errors] == [
        "too large",
        "unreachable",
        "type not supported",
        "no length",
    ]


@pytest.mark.parametrize("path", ["/nohead.gif", "/nohead501.gif"])
async def test_head_refused_falls_back_to_a_ranged_get(make_preflight, media, path):
    preflight = await make_preflight(allow_private=True)
    await preflight.check([media.url(path)], deadline=10)
    assert [(m, t, h.get("range")) for m, t, h in media.requests] == [
        ("HEAD", path, None),
        ("GET", path, "bytes=0-0"),
    ]


async def test_three_redirects_are_followed(make_preflight, media):
    preflight = await make_preflight(allow_private=True)
    await preflight.check([media.url("/r1")], deadline=10)
    assert [t for _, t, _ in media.requests] == ["/r1", "/r2", "/r3", "/ok.png"]


async def test_a_fourth_redirect_is_refused(make_preflight, media):
    preflight = await make_preflight(allow_private=True)
    [error] = await refusals(preflight, [media.url("/s1")])
    assert error == {"field": "media_urls[0]", "message": "too many redirects (more than 3)"}
    assert [t for _, t, _ in media.requests] == ["/s1", "/s2", "/s3", "/s4"]  # not /ok.png


async def test_a_slow_server_is_bounded_per_url(make_preflight, media):
    preflight = await make_preflight(allow_private=True, per_url_seconds=0.3)
    started = time.monotonic()
    errors = await refusals(preflight, [media.url("/slow.png"), media.url("/missing.png")])
    assert time.monotonic() - started < 2
    assert errors[0] == {"field": "media_urls[0]", "message": "unreachable: no answer within 0.3 s"}
    assert errors[1]["field"] == "media_urls[1]"


async def test_the_send_deadline_bounds_the_whole_preflight(make_preflight, media):
    preflight = await make_preflight(allow_private=True)  # 3 s per URL
    started = time.monotonic()
    with pytest.raises(MediaRejected) as info:
        await preflight.check([media.url("/slow.png")], deadline=0.4)
    assert time.monotonic() - started < 2
    assert info.value.errors == [
        {"field": "media_urls[0]", "message": "unreachable: no answer within 0.4 s"}
    ]


async def test_an_unexpected_failure_is_a_refusal_not_a_crash(make_preflight, monkeypatch):
    preflight = await make_preflight(allow_private=True)

    async def broken(url: Any) -> Verdict:
        raise UnicodeError("label too long")

    monkeypatch.setattr(preflight, "_follow", broken)
    [error] = await refusals(preflight, ["http://example.com/a.png"])
    assert error["message"] == "unreachable: not a URL that can be fetched"


# The cache --------------------------------------------------------------------------------
async def test_a_success_is_cached_for_five_minutes(make_preflight, media):
    now = [1000.0]
    preflight = await make_preflight(allow_private=True, cache=VerdictCache(clock=lambda: now[0]))
    url = media.url("/ok.png")
    for _ in range(3):
        await preflight.check([url, url], deadline=10)
    assert media.hits("/ok.png") == 1
    now[0] += 299
    await preflight.check([url], deadline=10)
    assert media.hits("/ok.png") == 1
    now[0] += 1
    await preflight.check([url], deadline=10)
    assert media.hits("/ok.png") == 2


async def test_a_failure_is_cached_for_thirty_seconds(make_preflight, media):
    now = [1000.0]
    preflight = await make_preflight(allow_private=True, cache=VerdictCache(clock=lambda: now[0]))
    url = media.url("/fixed-later.png")
    await refusals(preflight, [url])
    media.routes["/fixed-later.png"] = media_file("image/png", 10)  # the caller fixes it
    now[0] += 29
    await refusals(preflight, [url])  # still the cached failure
    assert media.hits("/fixed-later.png") == 1
    now[0] += 1
    await preflight.check([url], deadline=10)
    assert media.hits("/fixed-later.png") == 2


async def test_concurrent_checks_of_one_url_share_one_request(make_preflight, media):
    preflight = await make_preflight(allow_private=True)
    url = media.url("/ok.png")
    await asyncio.gather(*(preflight.check([url], deadline=10) for _ in range(20)))
    assert media.hits("/ok.png") == 1


def test_the_cache_is_bounded_least_recently_used_first():
    cache = VerdictCache(max_entries=2)
    ok = Verdict("ok", size=1)
    cache.put("a", ok)
    cache.put("b", ok)
    assert cache.get("a") is ok  # a is now the most recent
    cache.put("c", ok)
    assert len(cache) == 2 and cache.get("b") is None and cache.get("a") is ok


# The SSRF guard ---------------------------------------------------------------------------
PRIVATE_LITERALS = [
    "127.0.0.1",
    "10.0.0.1",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",
    "0.0.0.0",
    "224.0.0.1",
    "240.0.0.1",
    "100.64.0.1",
    "[::1]",
    "[fc00::1]",
    "[fe80::1]",
    "[::ffff:127.0.0.1]",
    "[::ffff:169.254.169.254]",
    "[::]",
    "[2002:7f00:1::]",  # 6to4 around 127.0.0.1
]


@pytest.mark.parametrize("host", [*PRIVATE_LITERALS, "localhost", "media.internal"])
async def test_private_addresses_are_refused_without_a_connection(make_preflight, recorder, host):
    preflight = await make_preflight(resolver=HostsResolver({"media.internal": "127.0.0.1"}))
    [error] = await refusals(preflight, [f"http://{host}:{recorder.port}/a.png"])
    assert error == {"field": "media_urls[0]", "message": NOT_ALLOWED}
    assert "127.0.0.1" not in error["message"]  # never which address a name resolved to
    await asyncio.sleep(0.05)
    assert recorder.accepts == 0


@pytest.mark.parametrize("host", ["2130706433", "127.1", "0x7f.0.0.1", "017700000001"])
async def test_legacy_numeric_hosts_are_refused_without_a_connection(
    make_preflight, recorder, host
):
    """Forms that the C library reads as 127.0.0.1: aiohttp refuses some as invalid, the
    resolver refuses what they resolve to; none connects."""
    preflight = await make_preflight()
    [error] = await refusals(preflight, [f"http://{host}:{recorder.port}/a.png"])
    assert error["message"] in (NOT_ALLOWED, "unreachable: not a URL that can be fetched")
    await asyncio.sleep(0.05)
    assert recorder.accepts == 0


async def test_the_recorder_does_see_a_connection_when_the_guard_is_off(make_preflight, recorder):
    """The control for the table above: the same URL, guard off, reaches the socket."""
    preflight = await make_preflight(allow_private=True)
    await refusals(preflight, [f"http://127.0.0.1:{recorder.port}/a.png"])
    await asyncio.sleep(0.05)
    assert recorder.accepts >= 1  # aiohttp retries a HEAD the server dropped at once


@pytest.mark.parametrize("target", ["127.0.0.1", "localhost", "[::ffff:7f00:1]"])
async def test_a_redirect_to_a_private_address_is_refused(make_preflight, media, recorder, target):
    """The first hop is allowed (MEDIA_ALLOW_HOSTS names it); the hop it redirects to is
    another loopback port, not allowed."""
    media.routes["/to-private"] = redirect(f"http://{target}:{recorder.port}/secret")
    preflight = await make_preflight(allow_hosts=[f"127.0.0.1:{media.port}"])
    [error] = await refusals(preflight, [media.url("/to-private")])
    assert error == {"field": "media_urls[0]", "message": NOT_ALLOWED}
    assert media.hits("/to-private") == 1
    await asyncio.sleep(0.05)
    assert recorder.accepts == 0


async def test_allowed_hosts_are_exempt_from_the_address_rule_only(make_preflight, media):
    preflight = await make_preflight(allow_hosts=[f"127.0.0.1:{media.port}"])
    await preflight.check([media.url("/ok.png")], deadline=10)
    [error] = await refusals(preflight, [media.url("/page.html")])  # other rules still apply
    assert error["message"].startswith("type not supported")
    other_port = await make_preflight(allow_hosts=[f"127.0.0.1:{media.port + 1}"])
    [error] = await refusals(other_port, [media.url("/ok2.png")])
    assert error["message"] == NOT_ALLOWED


async def test_an_allowed_name_may_resolve_to_a_private_address(make_preflight, media):
    resolver = HostsResolver({"cdn.internal": "127.0.0.1"})
    preflight = await make_preflight(resolver=resolver, allow_hosts=["cdn.internal"])
    await preflight.check([f"http://cdn.internal:{media.port}/ok.png"], deadline=10)
    assert media.hits("/ok.png") == 1


def test_public_addresses_are_public():
    assert is_public("93.184.216.34")
    assert is_public("2606:2800:220:1:248:1893:25c8:1946")
    assert not is_public("64:ff9b::a00:1")  # NAT64 (of 10.0.0.1): inside reserved ::/8
    assert not is_public("::ffff:10.0.0.1")
    assert not is_public("not an address")


# In a send --------------------------------------------------------------------------------
def on(settings_factory: Callable[..., Any], **overrides: Any) -> Any:
    return settings_factory(media_preflight=True, media_allow_private=True, **overrides)


def body(*urls: str) -> dict[str, Any]:
    return {**VALID, "media_urls": list(urls)}


async def test_a_send_with_bad_media_is_422_and_never_reaches_plivo(
    settings_factory, client_for, fake_plivo: FakePlivo, media
):
    async with client_for(on(settings_factory)) as client:
        response = await client.post(
            "/api/mms/send",
            json=body(media.url("/ok.png"), media.url("/missing.png"), media.url("/page.html")),
        )
        metrics = (await client.get("/metrics")).text
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == "media_rejected"
    assert [e["field"] for e in problem["errors"]] == ["media_urls[1]", "media_urls[2]"]
    assert "HTTP 404" in problem["errors"][0]["message"]
    assert fake_plivo.sends() == []
    assert 'mms_sends_total{code="media_rejected"} 1.0' in metrics
    assert 'mms_media_preflight_results_total{reason="unreachable"} 1.0' in metrics
    assert 'mms_media_preflight_results_total{reason="type_not_supported"} 1.0' in metrics
    assert 'mms_media_preflight_cache_total{result="miss"} 3.0' in metrics
    assert "mms_media_preflight_duration_seconds_count 1.0" in metrics


async def test_a_send_with_good_media_goes_on_and_the_next_one_hits_the_cache(
    settings_factory, client_for, fake_plivo: FakePlivo, media
):
    async with client_for(on(settings_factory)) as client:
        for _ in range(2):
            response = await client.post("/api/mms/send", json=body(media.url("/ok.png")))
            assert response.status_code == 200
        metrics = (await client.get("/metrics")).text
    assert len(fake_plivo.sends()) == 2
    assert media.hits("/ok.png") == 1
    assert 'mms_media_preflight_cache_total{result="hit"} 1.0' in metrics


async def test_a_refused_send_counts_against_no_destination_limit(
    settings_factory, client_for, fake_plivo: FakePlivo, media
):
    settings = on(settings_factory, rate_limit_per_destination="1/hour")
    async with client_for(settings) as client:
        refused = await client.post("/api/mms/send", json=body(media.url("/missing.png")))
        sent = await client.post("/api/mms/send", json=body(media.url("/ok.png")))
    assert refused.status_code == 422
    assert sent.status_code == 200, sent.text
    assert len(fake_plivo.sends()) == 1


async def test_a_refused_send_stores_nothing_under_its_idempotency_key(
    settings_factory, client_for, fake_plivo: FakePlivo, media
):
    key = {"Idempotency-Key": "media-key-1"}
    async with client_for(on(settings_factory)) as client:
        refused = await client.post(
            "/api/mms/send", json=body(media.url("/missing.png")), headers=key
        )
        # Not stored: the key is free for the corrected request (no idempotency_key_reused).
        sent = await client.post("/api/mms/send", json=body(media.url("/ok.png")), headers=key)
        listed = await client.get("/api/mms", params={"idempotencyKey": "media-key-1"})
    assert refused.status_code == 422
    assert sent.status_code == 200, sent.text
    assert "idempotent-replayed" not in sent.headers
    assert len(listed.json()["items"]) == 1  # the one real send, no row of the refusal


async def test_a_stored_response_replays_even_when_the_media_is_gone(
    settings_factory, client_for, fake_plivo: FakePlivo, media
):
    key = {"Idempotency-Key": "media-key-2"}
    async with client_for(on(settings_factory)) as client:
        first = await client.post("/api/mms/send", json=body(media.url("/ok.png")), headers=key)
        del media.routes["/ok.png"]  # the picture is gone since
        client.services.preflight.cache = VerdictCache()  # and no cached verdict helps
        again = await client.post("/api/mms/send", json=body(media.url("/ok.png")), headers=key)
    assert first.status_code == again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert media.hits("/ok.png") == 1  # the replay checked nothing
    assert len(fake_plivo.sends()) == 1


async def test_the_guard_is_on_in_a_send_and_allow_hosts_open_one_host(
    settings_factory, client_for, fake_plivo: FakePlivo, media, recorder
):
    settings = settings_factory(
        media_preflight=True, media_allow_hosts=f"localhost:1,127.0.0.1:{media.port}"
    )
    async with client_for(settings) as client:
        allowed = await client.post("/api/mms/send", json=body(media.url("/ok.png")))
        refused = await client.post(
            "/api/mms/send", json=body(f"http://127.0.0.1:{recorder.port}/a.png")
        )
    assert allowed.status_code == 200, allowed.text
    assert refused.status_code == 422
    assert refused.json()["errors"] == [{"field": "media_urls[0]", "message": NOT_ALLOWED}]
    await asyncio.sleep(0.05)
    assert recorder.accepts == 0
    assert len(fake_plivo.sends()) == 1


async def test_on_by_default_with_live_credentials(
    settings_factory, client_for, fake_plivo: FakePlivo, media
):
    settings = settings_factory(media_preflight=None, media_allow_private=True)
    async with client_for(settings) as client:
        assert client.services.preflight is not None
        response = await client.post("/api/mms/send", json=body(media.url("/missing.png")))
    assert response.status_code == 422


@pytest.mark.parametrize(
    "overrides",
    [
        {"plivo_auth_id": None, "plivo_auth_token": None, "plivo_sender_number": None},
        {"media_preflight": False},
    ],
    ids=["sandbox-default", "explicit-false"],
)
async def test_off_in_sandbox_and_when_false(settings_factory, client_for, media, overrides):
    settings = settings_factory(**{"media_preflight": None, **overrides})
    async with client_for(settings) as client:
        assert client.services.preflight is None
        response = await client.post("/api/mms/send", json=body(media.url("/missing.png")))
    assert response.status_code == 200
    assert media.requests == []


async def test_the_openapi_schema_declares_media_rejected(client: httpx.AsyncClient):
    schema = (await client.get("/openapi.json")).json()
    examples = schema["paths"]["/api/mms/send"]["post"]["responses"]["422"]["content"][
        "application/problem+json"
    ]["examples"]
    assert "media_rejected" in examples


# Settings ---------------------------------------------------------------------------------
PROD = {
    "PLIVO_AUTH_ID": "MAFAKEAUTHID00000000",
    "PLIVO_AUTH_TOKEN": "fake-auth-token-0123456789",
    "PLIVO_SENDER_NUMBER": "+14155550000",
    "APP_ENV": "production",
    "API_KEYS": "svc:0123456789abcdef0123",
}


def test_settings_defaults():
    settings = load_settings(_env_file=None)
    assert settings.media_max_bytes == 2_097_152
    assert settings.media_max_total_bytes == 5_242_880
    assert settings.media_allow_private is False
    assert settings.media_allow_hosts == ()
    assert settings.media_preflight_enabled is False  # sandbox


def test_allow_hosts_are_parsed(monkeypatch):
    monkeypatch.setenv("MEDIA_ALLOW_HOSTS", " CDN.internal , 10.0.0.5:8443,[fd00::1]:443,fd00::2")
    settings = load_settings(_env_file=None)
    assert settings.media_allow_hosts == (
        "cdn.internal",
        "10.0.0.5:8443",
        "[fd00::1]:443",
        "fd00::2",
    )


def test_allow_private_is_refused_in_production(monkeypatch):
    for name, value in {**PROD, "MEDIA_ALLOW_PRIVATE": "true"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=r"^MEDIA_ALLOW_PRIVATE:"):
        load_settings(_env_file=None)
    monkeypatch.setenv("MEDIA_ALLOW_PRIVATE", "false")
    assert load_settings(_env_file=None).media_preflight_enabled is True  # live: on


# Asynchronous sends: checked at acceptance, re-checked (cached) by the outbox ---------------
async def test_an_async_send_with_bad_media_is_422_at_acceptance(
    settings_factory, client_for, fake_plivo: FakePlivo, media
):
    async with client_for(on(settings_factory)) as client:
        response = await client.post(
            "/api/mms/send",
            json=body(media.url("/page.html")),
            headers={"Prefer": "respond-async"},
        )
        listed = (await client.get("/api/mms")).json()["items"]
    assert response.status_code == 422 and response.json()["code"] == "media_rejected"
    assert listed == [] and fake_plivo.sends() == []


async def test_the_outbox_rechecks_media_from_the_cache(
    settings_factory, client_for, fake_plivo: FakePlivo, media
):
    async with client_for(on(settings_factory)) as client:
        response = await client.post(
            "/api/mms/send", json=body(media.url("/ok.png")), headers={"Prefer": "respond-async"}
        )
        assert response.status_code == 202
        for _ in range(200):
            if fake_plivo.sends():
                break
            await asyncio.sleep(0.05)
        metrics = (await client.get("/metrics")).text
    assert len(fake_plivo.sends()) == 1
    assert media.hits("/ok.png") == 1  # checked once at acceptance; the re-check is cached
    assert 'mms_media_preflight_cache_total{result="hit"} 1.0' in metrics
