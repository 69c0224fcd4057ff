"""What the configured endpoints receive: the targets the store's writes consult, and a
message's `data` (the lookup's serialisation without the history)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.config import ALL_EVENTS, Settings
from app.mms.service import message_out
from app.store.webhooks import Targets


def message_data(row: dict[str, Any]) -> dict[str, Any]:
    """`data` of a `message.status` event: `GET /api/mms/{id}`'s message without `events`."""
    return message_out({**row, "events": None}).model_dump(mode="json", exclude={"events"})


def targets_for(settings: Settings, on_event: Callable[[], None] | None = None) -> Targets:
    names = {endpoint.name for endpoint in settings.webhooks}
    return Targets(
        callers=frozenset(names - {ALL_EVENTS}),
        everything=ALL_EVENTS in names,
        message_data=message_data,
        on_event=on_event,
    )
