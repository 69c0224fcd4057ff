"""Inbound messages: the form Plivo posts to its `message_url`, validated, then stored
with its opt-out meaning (one transaction, with the request's nonces)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from app.callbacks.service import nonce_key
from app.config import Settings
from app.logging import get_logger
from app.optouts.keywords import meaning
from app.phone import from_plivo
from app.store.db import Database, StoreUnavailable
from app.store.inbound import InboundOutcome, RecordInbound

log = get_logger("app.inbound")
MAX_MEDIA = 20  # Plivo sends at most 10 attachments; both numberings fit
_MEDIA_FIELD = re.compile(r"Media([0-9]{1,2})")
_MEDIA_URL = re.compile(r"https?://[!-~]{1,2040}")  # absolute, no spaces or controls
_UUID = r"^[A-Za-z0-9-]{1,64}$"
_SHORT_ASCII = r"^[ -~]{0,16}$"


def _plivo_number(value: Any) -> Any:
    """Plivo writes numbers with or without the leading `+`: E.164 from here on."""
    if isinstance(value, str):
        number = from_plivo(value)
        if number is None:
            raise ValueError("must be a phone number, with or without the leading +")
        return number
    return value


def _blank_is_none(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


PlivoNumber = Annotated[str, BeforeValidator(_plivo_number)]
BlankIsNone = BeforeValidator(_blank_is_none)
ShortAscii = Annotated[str, Field(pattern=_SHORT_ASCII)]
# Plivo's messages are at most 1,600 characters; the bound leaves room and keeps a body at
# the bound (12 bytes a character, percent-encoded) within the 64 KiB body limit, so an
# over-long text is a 422 naming the field rather than a 413.
MessageText = Annotated[str, Field(max_length=4_000)]


class InboundForm(BaseModel):
    """The fields of Plivo's inbound message that the service uses; others are ignored.
    `Text` (SMS) or `Body` (MMS); media as `Media0…` or `Media1…` (Plivo's documents
    disagree), collected in order into `media`."""

    model_config = ConfigDict(extra="ignore")

    From: PlivoNumber = Field(examples=["14155550100"])
    To: PlivoNumber = Field(examples=["14155550000"])
    MessageUUID: str = Field(pattern=_UUID, examples=["a9c5f3c2-1a2b-11ef-9f2a-0242ac110002"])
    Type: Annotated[ShortAscii | None, BlankIsNone] = None
    Text: Annotated[MessageText | None, BlankIsNone] = None
    Body: Annotated[MessageText | None, BlankIsNone] = None
    MessageIntent: Annotated[ShortAscii | None, BlankIsNone] = Field(
        None, examples=["optout"], description="optout, optin or help (long codes, toll-free)"
    )
    MediaCount: Annotated[Annotated[int, Field(ge=0, le=MAX_MEDIA)] | None, BlankIsNone] = None
    media: list[str] = Field(default_factory=list, description="Media0… / Media1…, in order")

    @model_validator(mode="before")
    @classmethod
    def _collect_media(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        found: list[tuple[int, str]] = []
        for name, value in data.items():
            match = _MEDIA_FIELD.fullmatch(name)
            if match is None or not value:
                continue
            if not _MEDIA_URL.fullmatch(value):
                raise ValueError(f"{name} must be an absolute http(s) URL")
            found.append((int(match[1]), value))
        if len(found) > MAX_MEDIA:
            raise ValueError(f"at most {MAX_MEDIA} media")
        return {**data, "media": [url for _, url in sorted(found)]}

    @property
    def text(self) -> str | None:
        return self.Text if self.Text is not None else self.Body


async def receive(
    db: Database, form: InboundForm, *, settings: Settings, nonces: tuple[str, ...] = ()
) -> InboundOutcome:
    """Store the message and apply its opt-out meaning. A replayed nonce or a message
    already stored changes nothing."""
    if db.records_pending:
        # Records of accepted sends wait in memory for the store: take nothing new until
        # they are written (503; Plivo retries).
        raise StoreUnavailable("records of accepted sends are waiting for the store")
    text = form.text
    action = meaning(text, form.MessageIntent)
    # NUL is the one character PostgreSQL's text refuses: never a failed write.
    clean = text.replace("\x00", "\ufffd") if text else None
    outcome: InboundOutcome = await db.write(
        RecordInbound(
            message_uuid=form.MessageUUID,
            from_number=form.From,
            to_number=form.To,
            type=form.Type,
            text=clean if settings.store_message_text else None,
            media_urls=form.media,
            intent=form.MessageIntent,
            action=action,
            nonces=tuple(dict.fromkeys(nonce_key(n) for n in nonces)),
            webhook_text=clean,
            targets=db.webhooks,
        )
    )
    if outcome.changed is not None:
        log.info("optout_changed", action=outcome.changed, number=form.From, source="inbound")
    return outcome
