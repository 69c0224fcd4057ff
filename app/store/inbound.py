"""Inbound messages: stored with their request's nonces and their opt-out meaning, in one
transaction, so a replayed or redelivered message changes nothing."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from app.store import optouts, webhooks
from app.store.repository import insert_ignore, now_ms, record_nonces
from app.store.tables import inbound_messages

INBOUND_SOURCE = "inbound"


@dataclass(frozen=True)
class InboundOutcome:
    """`fresh`: not a replay (no nonce seen before) and not a redelivery of a stored
    message. `changed`: how the opt-out list changed (None: it did not)."""

    fresh: bool
    changed: optouts.Action | None = None


@dataclass
class RecordInbound:
    """Write op: record the nonces; if all are new, store the message and apply `action`."""

    message_uuid: str
    from_number: str
    to_number: str
    type: str | None
    text: str | None
    media_urls: list[str]
    intent: str | None
    action: optouts.Action | None
    nonces: tuple[str, ...] = ()
    received_at: int = field(default_factory=now_ms)
    # The text for the `message.inbound` webhook (kept apart: erased once delivered).
    webhook_text: str | None = field(default=None, repr=False)
    targets: webhooks.Targets = webhooks.NO_TARGETS

    async def run(self, conn: AsyncConnection) -> InboundOutcome:
        if self.nonces and not await record_nonces(conn, self.nonces):
            return InboundOutcome(fresh=False)
        stored = await conn.execute(
            insert_ignore(conn, inbound_messages)
            .values(
                message_uuid=self.message_uuid,
                from_number=self.from_number,
                to_number=self.to_number,
                type=self.type,
                text=self.text,
                media_urls=orjson.dumps(self.media_urls).decode() if self.media_urls else None,
                intent=self.intent,
                received_at=self.received_at,
            )
            .returning(inbound_messages.c.message_uuid)
        )
        if stored.first() is None:  # Plivo delivered this message before
            return InboundOutcome(fresh=False)
        if self.targets.everything:
            await webhooks.add_events(conn, self.targets, [self._event()])
        changed = self.action is not None and await optouts.change(
            conn,
            number=self.from_number,
            action=self.action,
            source=INBOUND_SOURCE,
            at=self.received_at,
            reference=self.message_uuid,
            targets=self.targets,
        )
        return InboundOutcome(fresh=True, changed=self.action if changed else None)

    def _event(self) -> webhooks.Event:
        data = {
            "messageUuid": self.message_uuid,
            "from": self.from_number,
            "to": self.to_number,
            "type": self.type,
            "text": None,  # filled in at each attempt from the delivery's own text column
            "media": self.media_urls,
            "intent": self.intent,
            "receivedAt": webhooks.iso(self.received_at),
        }
        return webhooks.Event(
            type=webhooks.MESSAGE_INBOUND, at=self.received_at, data=data, text=self.webhook_text
        )
