"""Media preflight: check every media URL before paying Plivo for a message it cannot send.

Plivo queues (and charges) an MMS whose media is a dead link, too large, of a type it
cannot send, or served without `Content-Length`, and the message fails later. Here each
URL is asked with `HEAD` (a one-byte ranged `GET` where HEAD is refused), redirects are
followed by hand so every hop is checked, and a bad URL becomes a 422 naming it.

Fetching caller-supplied URLs from inside a network is a server-side request forgery
hole, so the session is built to be safe by construction: its resolver resolves a name
once and refuses the lookup when any address is not public, so the connector can only
connect to an address that was checked (no second DNS answer); literal IP hosts, which
aiohttp never sends through a resolver, are checked before the request. Proxies from the
environment are ignored (a proxy would connect on our behalf, unchecked).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from app.errors import MediaRejected
from app.logging import get_logger

log = get_logger("app.media")

# Content types Plivo sends as MMS media (docs/media.md gives the source). Compared
# without parameters, case-insensitively.
ALLOWED_TYPES = frozenset(
    {
        "image/jpeg",
        "image/png",
        "image/gif",
        "video/mp4",
        "audio/mpeg",
        "application/pdf",
        "text/vcard",
        "text/x-vcard",  # vCard's older media type, still what many servers send
    }
)
MAX_REDIRECTS = 3
PER_URL_SECONDS = 3.0
OK_TTL_SECONDS = 300.0
FAILURE_TTL_SECONDS = 30.0  # short: a link the caller fixes works again soon
CACHE_ENTRIES = 10_000
REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Shared address space (RFC 6598, carrier-grade NAT): internal in many clouds, yet
# ipaddress calls it neither private nor reserved.
SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")
NOT_ALLOWED = (
    "address not allowed: the host is, or resolves to, a loopback, private, link-local or "
    "other non-public address"
)


class AddressNotAllowed(OSError):
    """Raised by the resolver: the connection is never attempted. Says nothing of the
    addresses the name resolved to."""

    def __init__(self) -> None:
        super().__init__(NOT_ALLOWED)


def is_public(address: str) -> bool:
    """False for every address class preflight must never reach (IPv4-mapped IPv6 and
    6to4 addresses are judged by the IPv4 address inside)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # a zone id says nothing
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        inner = ip.ipv4_mapped or ip.sixtofour
        if inner is not None and not is_public(str(inner)):
            return False
    return not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or ip in SHARED_ADDRESS_SPACE
    )


class HostPolicy:
    """Which hosts preflight may reach: public addresses, plus MEDIA_ALLOW_HOSTS (exempt
    from the private-address rule only); everything with MEDIA_ALLOW_PRIVATE (tests)."""

    def __init__(self, *, allow_private: bool = False, allow_hosts: Iterable[str] = ()) -> None:
        self.allow_private = allow_private
        self.allow_hosts = frozenset(h.lower() for h in allow_hosts)

    def exempt(self, host: str, port: int) -> bool:
        if self.allow_private:
            return True
        host = host.lower().rstrip(".")
        with_port = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return host in self.allow_hosts or with_port in self.allow_hosts


class GuardedResolver(AbstractResolver):
    """Resolves once through the wrapped resolver and refuses the lookup when any answer
    is not a public address; the connector then connects to exactly these answers."""

    def __init__(self, policy: HostPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self.inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self.inner.resolve(host, port, family)
        if not self.policy.exempt(host, port) and not all(is_public(a["host"]) for a in answers):
            raise AddressNotAllowed()
        return answers

    async def close(self) -> None:
        await self.inner.close()


@dataclass(frozen=True, slots=True)
class Verdict:
    """One URL's result: `reason` is `ok` or a stable label (metrics), `message` is for the
    caller, `size` the bytes Plivo would fetch."""

    reason: str
    message: str = ""
    size: int = 0

    @property
    def ok(self) -> bool:
        return self.reason == "ok"


class VerdictCache:
    """Bounded LRU of verdicts per URL: a success for 5 minutes, a failure for 30 s."""

    def __init__(
        self, max_entries: int = CACHE_ENTRIES, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[str, tuple[float, Verdict]] = OrderedDict()

    def get(self, url: str) -> Verdict | None:
        entry = self._entries.get(url)
        if entry is None:
            return None
        expires, verdict = entry
        if self.clock() >= expires:
            del self._entries[url]
            return None
        self._entries.move_to_end(url)
        return verdict

    def put(self, url: str, verdict: Verdict) -> None:
        ttl = OK_TTL_SECONDS if verdict.ok else FAILURE_TTL_SECONDS
        self._entries[url] = (self.clock() + ttl, verdict)
        self._entries.move_to_end(url)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def _noop(*_: Any) -> None:
    return None


class Preflight:
    """One shared aiohttp session of its own (limits and timeouts apart from Plivo's
    client), created in the lifespan and closed at shutdown."""

    def __init__(
        self,
        *,
        max_bytes: int,
        max_total_bytes: int,
        allow_private: bool = False,
        allow_hosts: Iterable[str] = (),
        per_url_seconds: float = PER_URL_SECONDS,
        resolver: AbstractResolver | None = None,
        cache: VerdictCache | None = None,
        on_result: Callable[[str], None] = _noop,
        on_cache: Callable[[bool], None] = _noop,
        on_duration: Callable[[float], None] = _noop,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_total_bytes = max_total_bytes
        self.policy = HostPolicy(allow_private=allow_private, allow_hosts=allow_hosts)
        self.per_url_seconds = per_url_seconds
        self.cache = cache if cache is not None else VerdictCache()
        self.on_result, self.on_cache, self.on_duration = on_result, on_cache, on_duration
        self._in_flight: dict[str, asyncio.Task[Verdict]] = {}
        self._resolver = GuardedResolver(self.policy, resolver)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> Preflight:
        connector = aiohttp.TCPConnector(
            resolver=self._resolver,
            limit=100,  # media hosts are many and slow ones must not starve the rest
            limit_per_host=10,
            ttl_dns_cache=10,  # cached answers were checked when they were resolved
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.per_url_seconds),
            trust_env=False,  # no HTTP(S)_PROXY: a proxy would connect unchecked
            auto_decompress=False,
            headers={"User-Agent": "mms-gateway-media-preflight"},
        )
        return self

    async def aclose(self) -> None:
        for task in list(self._in_flight.values()):
            task.cancel()
        if self._session is not None:
            await self._session.close()

    async def check(self, urls: list[str], *, deadline: float) -> None:
        """Raise MediaRejected (422) naming every failing URL, in order; return when all
        pass. All URLs are checked at once, each within min(3 s, `deadline`)."""
        started = time.perf_counter()
        verdicts: dict[str, Verdict] = {}
        missing: list[str] = []
        for url in dict.fromkeys(urls):
            cached = self.cache.get(url)
            self.on_cache(cached is not None)
            if cached is None:
                missing.append(url)
            else:
                verdicts[url] = cached
        if missing:  # a send whose URLs are all cached (the usual case) never yields here
            timeout = min(self.per_url_seconds, deadline)
            found = await asyncio.gather(*(self._fetched(url, timeout) for url in missing))
            verdicts.update(zip(missing, found, strict=True))
        self.on_duration(time.perf_counter() - started)
        errors = []
        total = 0
        for index, url in enumerate(urls):
            verdict = verdicts[url]
            self.on_result(verdict.reason)
            if verdict.ok:
                total += verdict.size
            else:
                errors.append({"field": f"media_urls[{index}]", "message": verdict.message})
        if total > self.max_total_bytes:
            self.on_result("total_too_large")
            errors.append(
                {
                    "field": "media_urls",
                    "message": f"too large together: {total} bytes; at most "
                    f"{self.max_total_bytes} bytes per message",
                }
            )
        if errors:
            raise MediaRejected("A media URL cannot be sent; see `errors`.", errors=errors)

    async def _fetched(self, url: str, timeout: float) -> Verdict:
        """The verdict of a URL not in the cache: concurrent sends of one picture share
        one check."""
        task = self._in_flight.get(url)
        if task is None:
            task = asyncio.ensure_future(self._fetch(url, timeout))
            self._in_flight[url] = task
            task.add_done_callback(lambda _: self._in_flight.pop(url, None))
        verdict = await asyncio.shield(task)
        return verdict

    async def _fetch(self, url: str, timeout: float) -> Verdict:
        try:
            async with asyncio.timeout(timeout):
                verdict = await self._follow(URL(url))
        except TimeoutError:
            verdict = Verdict("unreachable", f"unreachable: no answer within {timeout:g} s")
        except Exception as exc:  # never a 500 for a caller's URL: say it cannot be fetched
            log.warning("media_preflight_failed", error=type(exc).__name__)
            verdict = Verdict("unreachable", "unreachable: not a URL that can be fetched")
        self.cache.put(url, verdict)
        return verdict

    async def _follow(self, url: URL) -> Verdict:
        assert self._session is not None, "Preflight.start() was not awaited"
        use_get = False
        for hop in range(MAX_REDIRECTS + 1):
            if not self._host_allowed(url):
                return Verdict("address_not_allowed", NOT_ALLOWED)
            try:
                status, headers = await self._ask(url, use_get)
                if status in (405, 501) and not use_get:  # HEAD refused: a one-byte GET
                    use_get = True
                    status, headers = await self._ask(url, use_get)
            except aiohttp.ClientError as exc:
                return _network_failure(exc)
            if status in REDIRECTS:
                location = headers.get("Location")
                if not location:
                    return Verdict("unreachable", f"unreachable: HTTP {status} without Location")
                if hop == MAX_REDIRECTS:
                    break
                try:
                    url = url.join(URL(location))
                except ValueError:
                    return Verdict("unreachable", "unreachable: a redirect to an invalid URL")
                if url.scheme not in ("http", "https") or not url.host:
                    return Verdict("unreachable", "unreachable: a redirect to a non-HTTP URL")
                continue
            return self._judge(status, headers)
        return Verdict("too_many_redirects", f"too many redirects (more than {MAX_REDIRECTS})")

    def _host_allowed(self, url: URL) -> bool:
        """Literal IP hosts never reach the resolver: they are checked here."""
        host = url.host or ""
        port = url.port or 0
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return True  # a name: the resolver checks what it resolves to
        return self.policy.exempt(host, port) or is_public(host)

    async def _ask(self, url: URL, use_get: bool) -> tuple[int, Any]:
        assert self._session is not None
        method = "GET" if use_get else "HEAD"
        headers = {"Range": "bytes=0-0"} if use_get else None
        async with self._session.request(
            method, url, headers=headers, allow_redirects=False
        ) as response:
            # The body is never read: leaving the block closes the connection.
            return response.status, response.headers

    def _judge(self, status: int, headers: Any) -> Verdict:
        if not 200 <= status < 300:
            return Verdict("unreachable", f"unreachable: the server answered HTTP {status}")
        raw_type = headers.get("Content-Type", "")
        media_type = raw_type.split(";", 1)[0].strip().lower()
        if media_type not in ALLOWED_TYPES:
            shown = media_type[:100] or "none given"
            return Verdict(
                "type_not_supported",
                f"type not supported: {shown}; Plivo sends " + ", ".join(sorted(ALLOWED_TYPES)),
            )
        size = _size(status, headers)
        if size is None:
            return Verdict(
                "no_length",
                "no length: the server sends no Content-Length, and Plivo refuses media "
                "without one",
            )
        if size > self.max_bytes:
            return Verdict(
                "too_large", f"too large: {size} bytes; at most {self.max_bytes} bytes per file"
            )
        return Verdict("ok", size=size)


def _size(status: int, headers: Any) -> int | None:
    """The file's size: Content-Length, or for a ranged answer (206) the total of
    Content-Range (`bytes 0-0/12345`)."""
    if status == 206:
        total = headers.get("Content-Range", "").rpartition("/")[2].strip()
        return int(total) if total.isdigit() else None
    length = headers.get("Content-Length", "").strip()
    return int(length) if length.isdigit() else None


def _network_failure(exc: aiohttp.ClientError) -> Verdict:
    """In words, never the exception's text: it may name the address a host resolved to."""
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(
        exc.os_error, AddressNotAllowed
    ):
        return Verdict("address_not_allowed", NOT_ALLOWED)
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return Verdict("unreachable", "unreachable: the host name does not resolve")
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return Verdict("unreachable", "unreachable: the TLS handshake failed")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return Verdict("unreachable", "unreachable: the connection failed")
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return Verdict("unreachable", "unreachable: no answer in time")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return Verdict("unreachable", "unreachable: the server closed the connection")
    if isinstance(exc, aiohttp.InvalidURL):
        return Verdict("unreachable", "unreachable: not a URL that can be fetched")
    return Verdict("unreachable", "unreachable: a network error")
