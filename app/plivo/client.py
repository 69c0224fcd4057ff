"""The Plivo client interface, its typed errors, and the aiohttp implementation.

Hand-written rather than the `plivo` SDK because the SDK is synchronous (requests): in a
thread pool it cannot keep up with an async client (docs/decisions/0001). aiohttp also
tells "refused before sending" (ClientConnectorError) from "dropped after sending"
(ServerDisconnectedError), which the no-double-send rule depends on; and it never retries
a POST on a broken keep-alive connection (only idempotent methods).
"""

from __future__ import annotations

import dataclasses
import email.utils
import re
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
from yarl import URL

CONNECT_TIMEOUT_SECONDS = 3.0


@dataclass(frozen=True, slots=True)
class OutboundMms:
    src: str
    dst: str
    text: str
    media_urls: list[str]
    callback_url: str | None = None

    def wire(self) -> dict[str, Any]:
        """Exactly Plivo's Message API body."""
        body: dict[str, Any] = {
            "src": self.src,
            "dst": self.dst,
            "text": self.text,
            "type": "mms",
            "media_urls": self.media_urls,
        }
        if self.callback_url:
            body["url"] = self.callback_url
            body["method"] = "POST"
        return body


@dataclass(frozen=True, slots=True)
class Accepted:
    api_id: str
    message_uuids: list[str]
    message: str = "message(s) queued"


@dataclass(frozen=True, slots=True)
class PlivoMessage:
    """A Message Detail Record, as Message Get / Message list return it."""

    message_uuid: str
    state: str
    error_code: str | None
    to_number: str = ""
    message_time: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


# Errors: what happened on the wire, not what to answer. The send service maps them.
class PlivoError(Exception):
    """Base: `may_have_sent` says whether Plivo may have taken the message."""

    may_have_sent = True
    api_id: str | None = None


class PlivoHTTPError(PlivoError):
    """Plivo answered with a non-2xx status."""

    def __init__(
        self, status: int, error: str, api_id: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(f"Plivo answered {status}: {error}")
        self.status = status
        self.error = error
        self.api_id = api_id
        self.retry_after = retry_after

    @property
    def may_have_sent(self) -> bool:  # type: ignore[override]
        # 4xx, 429 and 503 mean "not taken"; other 5xx may have been half-done.
        return self.status >= 500 and self.status != 503


class PlivoUnreachable(PlivoError):
    """Refused, DNS failure or connect timeout: the request never left."""

    may_have_sent = False


class PlivoDropped(PlivoError):
    """The connection broke after the request was (at least partly) sent."""


class PlivoTimeout(PlivoError):
    """No answer before the deadline, after the request may have been sent."""


class PlivoBadResponse(PlivoError):
    """A 2xx whose body is not Plivo's: Plivo may well have queued the message."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"unparseable answer (status {status}): {reason}")
        self.status = status


class PlivoClient(ABC):
    """What the service needs from Plivo; `AiohttpPlivoClient` and the sandbox implement it."""

    mode = "live"

    @abstractmethod
    async def send_mms(self, mms: OutboundMms, *, timeout: float) -> Accepted: ...

    @abstractmethod
    async def get_message(self, message_uuid: str, *, timeout: float) -> PlivoMessage | None:
        """Message Get; None when Plivo does not know the uuid."""

    @abstractmethod
    async def list_messages(
        self, *, to: str, since: datetime, until: datetime, timeout: float
    ) -> list[PlivoMessage]:
        """Outbound messages to `to` whose message_time lies in [since, until]."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


# A Retry-After from Plivo reaches callers (and our own retry waits) at most this long.
MAX_RETRY_AFTER_SECONDS = 300.0
_DELTA_SECONDS = re.compile(r"[0-9]+")  # ASCII only: "²".isdigit() is True
# RFC 9110 §5.6.7: IMF-fixdate, and the obsolete RFC 850 and asctime forms.
_HTTP_DATE = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
    r" \d{4} \d\d:\d\d:\d\d GMT"
    r"|(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), \d\d-[A-Z][a-z]{2}-\d\d"
    r" \d\d:\d\d:\d\d GMT"
    r"|(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4}",
    re.ASCII,
)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds, capped at MAX_RETRY_AFTER_SECONDS: delta-seconds (ASCII
    digits) or an HTTP-date. None when absent or anything else: a value that does not
    parse counts as no value (the caller's own default applies)."""
    if not value:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        seconds = float(value) if len(value) <= 12 else MAX_RETRY_AFTER_SECONDS
    elif _HTTP_DATE.fullmatch(value):
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, OverflowError):
            return None
        if when.tzinfo is None:  # asctime carries no zone: HTTP dates are always GMT
            when = when.replace(tzinfo=UTC)
        seconds = max(0.0, when.timestamp() - (time.time() if now is None else now))
    else:
        return None
    return min(seconds, MAX_RETRY_AFTER_SECONDS)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def parse_plivo_time(value: Any) -> datetime | None:
    """Plivo's `2021-07-13 13:04:06.799021+05:30` (offset optional, UTC assumed)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


_UUID = re.compile(r"[A-Za-z0-9_.:-]{1,64}", re.ASCII)


def usable_uuid(value: Any) -> bool:
    """A message_uuid the store can hold and a URL path can carry: Plivo's are 36-character
    UUIDs; anything up to 64 plain characters is taken."""
    return isinstance(value, str) and _UUID.fullmatch(value) is not None


def to_message(data: dict[str, Any]) -> PlivoMessage:
    code = data.get("error_code")
    error_code = str(code) if code not in (None, "", "000") else None
    return PlivoMessage(
        message_uuid=str(data.get("message_uuid", "")),
        state=str(data.get("message_state", "")),
        # Plivo's codes have at most 4 digits; anything longer is not one (nor storable).
        error_code=error_code if error_code is None or len(error_code) <= 8 else None,
        to_number=str(data.get("to_number", "")),
        message_time=parse_plivo_time(data.get("message_time")),
        raw=data,
    )


def _plivo_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


class AiohttpPlivoClient(PlivoClient):
    """One pooled keep-alive session per process, created in the lifespan."""

    def __init__(
        self, *, api_url: str, auth_id: str, auth_token: str, max_connections: int
    ) -> None:
        self._account_url = f"{api_url}/Account/{auth_id}"
        self._message_url = f"{self._account_url}/Message/"
        self._session = aiohttp.ClientSession(
            # Sends are capped by the sender's semaphore; the headroom is for reconciliation
            # lookups, so they never make a send wait for a connection.
            connector=aiohttp.TCPConnector(
                limit=max_connections + 5, keepalive_timeout=15, ttl_dns_cache=300
            ),
            headers={
                "Authorization": aiohttp.encode_basic_auth(auth_id, auth_token),
                "User-Agent": "mms-gateway",
                "Accept": "application/json",
            },
            raise_for_status=False,
        )

    async def aclose(self) -> None:
        await self._session.close()

    async def _request(
        self, method: str, url: str, *, timeout: float, json_body: dict[str, Any] | None = None
    ) -> tuple[int, bytes, str | None]:
        client_timeout = aiohttp.ClientTimeout(
            total=timeout, sock_connect=min(timeout, CONNECT_TIMEOUT_SECONDS)
        )
        data = orjson.dumps(json_body) if json_body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else None
        try:
            async with self._session.request(
                method, url, data=data, headers=headers, timeout=client_timeout
            ) as response:
                return response.status, await response.read(), response.headers.get("Retry-After")
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise PlivoUnreachable(type(exc).__name__) from None
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise PlivoTimeout(type(exc).__name__) from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise PlivoDropped(type(exc).__name__) from None
        except aiohttp.ClientError as exc:  # anything else: assume it may have been sent
            raise PlivoDropped(type(exc).__name__) from None

    async def send_mms(self, mms: OutboundMms, *, timeout: float) -> Accepted:
        status, body, retry_after = await self._request(
            "POST", self._message_url, timeout=timeout, json_body=mms.wire()
        )
        data = _json_object(body)
        if 200 <= status < 300:
            uuids = data.get("message_uuid") if data else None
            if not data or not isinstance(uuids, list) or not uuids:
                raise PlivoBadResponse(status, "no message_uuid in the answer")
            if not all(usable_uuid(u) for u in uuids):
                # Not storable as it is (e.g. longer than the column): an unknown outcome,
                # stored without a uuid and settled by reconciliation, never a lost row.
                raise PlivoBadResponse(status, "a message_uuid the service cannot store")
            return Accepted(
                api_id=str(data.get("api_id", ""))[:64],
                message_uuids=list(uuids),
                message=str(data.get("message") or "message(s) queued"),
            )
        raise _http_error(status, data, retry_after)

    async def get_message(self, message_uuid: str, *, timeout: float) -> PlivoMessage | None:
        status, body, retry_after = await self._request(
            "GET", f"{self._message_url}{message_uuid}/", timeout=timeout
        )
        data = _json_object(body)
        if status == 404:
            return None
        if status != 200 or data is None:
            raise _http_error(status, data, retry_after)
        # The record of the uuid we asked about, whatever uuid the answer spells.
        return dataclasses.replace(to_message(data), message_uuid=message_uuid)

    async def list_messages(
        self, *, to: str, since: datetime, until: datetime, timeout: float
    ) -> list[PlivoMessage]:
        query = {
            "to_number": to.lstrip("+"),
            "message_direction": "outbound",
            "message_time__gte": _plivo_time(since),
            "message_time__lte": _plivo_time(until),
            "limit": "20",
        }
        url = str(URL(self._message_url).with_query(query))
        status, body, retry_after = await self._request("GET", url, timeout=timeout)
        data = _json_object(body)
        if status != 200 or data is None:
            raise _http_error(status, data, retry_after)
        objects = data.get("objects") or []
        # A record whose uuid could not be stored is of no use to reconciliation.
        return [
            to_message(o)
            for o in objects
            if isinstance(o, dict) and usable_uuid(o.get("message_uuid"))
        ]


def _http_error(status: int, data: dict[str, Any] | None, retry_after: str | None) -> PlivoError:
    error = str((data or {}).get("error") or f"HTTP {status}")
    api_id = (data or {}).get("api_id")
    return PlivoHTTPError(
        status,
        error,
        api_id=str(api_id) if api_id else None,
        retry_after=parse_retry_after(retry_after),
    )
