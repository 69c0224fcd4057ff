"""Request and response models of the MMS endpoints."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    TypeAdapter,
)

from app.phone import canonical_region
from app.status import MessageStatus

MMS_REGIONS = frozenset({"US", "CA"})
MAX_URL_LENGTH = 2048
_http_url = TypeAdapter(AnyHttpUrl)
_SPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")
# C0 control characters other than tab, LF and CR: never meaningful in a message, and NUL
# is one PostgreSQL cannot store (a text column refuses it) -- so they are a 422, not a
# send that reaches Plivo and then fails to be recorded.
_CONTROL_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
_PRINTABLE_ASCII = re.compile(r"[ -~]{1,255}")


@lru_cache(maxsize=8192)
def _number_problem(number: str) -> str | None:
    # Only the canonical spelling is accepted (app/phone.py: one number, one limit bucket,
    # one opt-out entry), and only where Plivo sends MMS.
    problem, region = canonical_region(number)
    if problem is not None:
        return problem
    if region not in MMS_REGIONS:
        return "must be a US or Canadian number (Plivo sends MMS only there)"
    return None


def us_ca_number(value: str) -> str:
    problem = _number_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def message_text(value: str) -> str:
    if _CONTROL_IN_TEXT.search(value):
        raise ValueError("must not contain control characters (tab, CR and LF are allowed)")
    return value


def printable_ascii(value: str) -> str:
    """1-255 printable ASCII characters: the Idempotency-Key rule, for the listing filter."""
    if not _PRINTABLE_ASCII.fullmatch(value):
        raise ValueError("must be 1-255 printable ASCII characters")
    return value


def media_url(value: str) -> str:
    if len(value) > MAX_URL_LENGTH:
        raise ValueError(f"must be at most {MAX_URL_LENGTH} characters")
    if _SPACE_OR_CONTROL.search(value):
        raise ValueError("must not contain spaces or control characters")
    try:
        url = _http_url.validate_python(value)
    except ValueError:
        raise ValueError("must be an absolute http or https URL") from None
    if not url.host:
        raise ValueError("must be an absolute http or https URL")
    return value  # sent exactly as given, not pydantic's normalised form


# RFC 3339 date-time: a date, `T` (or a space), a time, and an offset -- `Z` or +hh:mm.
_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})"
)


def rfc3339(value: str) -> str:
    """An RFC 3339 date-time with an offset, normalised to UTC with milliseconds (`…Z`):
    the same instant, however spelled, is the same request (the Idempotency fingerprint)."""
    match = _RFC3339.fullmatch(value)
    if match is None:
        raise ValueError(
            "must be an RFC 3339 date-time with an offset, e.g. 2026-12-24T09:00:00-05:00"
        )
    date, clock, fraction, offset = match.groups()
    offset = "+00:00" if offset in ("Z", "z") else offset
    try:  # datetime takes at most 6 fractional digits
        moment = datetime.fromisoformat(f"{date}T{clock}.{(fraction or '0')[:6]:0<6}{offset}")
    except ValueError:
        raise ValueError("is not a valid date-time (month, day or time out of range)") from None
    return iso_ms(moment)


def iso_ms(moment: datetime) -> str:
    """An aware datetime as the API writes times: UTC, milliseconds, `Z`."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


PhoneNumber = Annotated[
    StrictStr,
    AfterValidator(us_ca_number),
    Field(
        description="Recipient, E.164, a valid US or Canadian number (libphonenumber)",
        examples=["+14155550100"],
        json_schema_extra={"pattern": r"^\+[1-9][0-9]{1,14}$"},  # documented; checked above
    ),
]
MediaUrl = Annotated[
    StrictStr,
    AfterValidator(media_url),
    Field(json_schema_extra={"format": "uri", "pattern": "^https?://[^\\s]+$", "maxLength": 2048}),
]


class SendRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "to": "+14155550100",
                    "media_urls": ["https://example.com/cat.png"],
                    "text": "Hello from mms-gateway",
                }
            ]
        },
    )

    to: PhoneNumber
    media_urls: Annotated[
        list[MediaUrl],
        Field(min_length=1, max_length=10, description="1–10 absolute http(s) URLs, ≤ 2048 chars"),
    ]
    text: Annotated[StrictStr, Field(min_length=1, max_length=1600), AfterValidator(message_text)]
    send_at: Annotated[
        StrictStr | None,
        AfterValidator(lambda v: None if v is None else rfc3339(v)),
        Field(
            description="When to send: an RFC 3339 date-time with an offset, at most 30 days "
            "ahead (up to 60 s in the past means now). Makes the send asynchronous (202).",
            examples=["2026-12-24T09:00:00-05:00"],
            json_schema_extra={"format": "date-time"},
        ),
    ] = None
    quiet_hours: StrictBool = Field(
        False,
        description="Hold the send to the recipient's local QUIET_HOURS window (TCPA: 8 am "
        "to 9 pm). Makes the send asynchronous (202).",
    )

    @property
    def is_async(self) -> bool:
        """`send_at` or quiet hours: the outbox sends it (a `Prefer: respond-async` too)."""
        return self.send_at is not None or self.quiet_hours


class ScheduledResponse(BaseModel):
    """An asynchronous send, accepted: the outbox sends it at `sendAt` (or later)."""

    id: str = Field(examples=["9f1c2b3a4d5e6f708192a3b4c5d6e7f8"], description="The service's id")
    status: MessageStatus = Field(examples=["scheduled"])
    sendAt: str = Field(examples=["2026-12-24T14:00:00.000Z"], description="UTC, milliseconds")


class SendResponse(BaseModel):
    """`message`, `messageUuid`, `apiId`: Plivo's 202 means queued, not delivered."""

    message: str = Field(examples=["message(s) queued"])
    messageUuid: list[str] = Field(examples=[["db3ce55a-7f1d-11e1-8ea7-1231380bc196"]])
    apiId: str = Field(examples=["db342550-7f1d-11e1-8ea7-1231380bc196"])


class EventOut(BaseModel):
    status: str = Field(examples=["delivered"])
    errorCode: str | None = Field(None, examples=[None])
    at: str = Field(examples=["2026-11-26T19:55:57.318Z"], description="When we received it (UTC)")


class MessageOut(BaseModel):
    """What became of a message. `messageUuid` is null while the outcome is unknown."""

    id: str = Field(examples=["9f1c2b3a4d5e6f708192a3b4c5d6e7f8"], description="The service's id")
    messageUuid: str | None = Field(examples=["db3ce55a-7f1d-11e1-8ea7-1231380bc196"])
    to: str = Field(examples=["+14155550100"])
    status: MessageStatus = Field(
        examples=["delivered"],
        description="Moves only forward, in the order listed; the first final status "
        "(`delivered` or any after it) stays.",
    )
    errorCode: str | None = Field(examples=[None])
    errorMessage: str | None = Field(examples=[None], description="Meaning of Plivo's code")
    mediaCount: int = Field(examples=[1])
    sendAt: str | None = Field(
        None, examples=[None], description="When a scheduled send goes (UTC); null for sync sends"
    )
    cancelReason: str | None = Field(
        None, examples=[None], description="Why it was canceled: caller, opted_out, key_removed"
    )
    idempotencyKey: str | None = Field(None, examples=["order-1234-receipt"])
    createdAt: str = Field(examples=["2026-11-26T19:55:56.100Z"])
    updatedAt: str = Field(examples=["2026-11-26T19:55:58.000Z"])
    events: list[EventOut] | None = Field(
        None, description="Status history (on GET /api/mms/{id}; null in listings)"
    )


class MessagePage(BaseModel):
    items: list[MessageOut]
    nextCursor: str | None = Field(None, description="Pass as `cursor` for the next page")
