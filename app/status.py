"""Message statuses and their order: the one list the store, the routes, the metrics and the
models derive from.

A message's status only ever moves up in rank, whichever path reports it (the send, a
callback, a lookup); the first final status stays. The ranks are stored with each message
(`messages.status_rank`), so existing values must never change: a status that comes before
`unknown` (e.g. a scheduled send) gets a negative rank, a new final one the final rank.
"""

from __future__ import annotations

from enum import StrEnum


class MessageStatus(StrEnum):
    """Declared in rank order."""

    SCHEDULED = "scheduled"  # accepted for a later (or asynchronous) send: in the outbox
    UNKNOWN = "unknown"  # the send's outcome is not known yet (in flight, or lost)
    QUEUED = "queued"  # Plivo took it
    SENT = "sent"  # handed to the carrier
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"
    FAILED = "failed"
    REJECTED = "rejected"  # Plivo refused it for good
    NOT_SENT = "not_sent"  # Plivo never had it (an unknown outcome settled, or given up)
    CANCELED = "canceled"  # a scheduled send withdrawn before it was sent (`cancel_reason`)

    @property
    def rank(self) -> int:
        return _RANK[self]

    @property
    def is_final(self) -> bool:
        return _RANK[self] >= FINAL_RANK


FINAL_RANK = 3
_RANK = {
    MessageStatus.SCHEDULED: -1,
    MessageStatus.UNKNOWN: 0,
    MessageStatus.QUEUED: 1,
    MessageStatus.SENT: 2,
    MessageStatus.DELIVERED: FINAL_RANK,
    MessageStatus.UNDELIVERED: FINAL_RANK,
    MessageStatus.FAILED: FINAL_RANK,
    MessageStatus.REJECTED: FINAL_RANK,
    MessageStatus.NOT_SENT: FINAL_RANK,
    MessageStatus.CANCELED: FINAL_RANK,
}
# By plain string, for the hot paths that look up what Plivo or a row says.
STATUS_RANK: dict[str, int] = {status.value: rank for status, rank in _RANK.items()}
STATUSES: tuple[str, ...] = tuple(status.value for status in MessageStatus)
