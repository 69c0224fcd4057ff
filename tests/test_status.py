"""Message statuses: one enum, one order, ranks compatible with what the store holds."""

from __future__ import annotations

from app.status import FINAL_RANK, STATUS_RANK, MessageStatus


def test_ranks_follow_the_declaration_order():
    ranks = [status.rank for status in MessageStatus]
    assert ranks == sorted(ranks)
    assert [s.is_final for s in MessageStatus] == [s.rank >= FINAL_RANK for s in MessageStatus]


def test_ranks_stored_in_the_database_never_change():
    """`messages.status_rank` holds these numbers: changing one would reorder old rows."""
    assert STATUS_RANK == {
        "scheduled": -1,
        "unknown": 0,
        "queued": 1,
        "sent": 2,
        "delivered": 3,
        "undelivered": 3,
        "failed": 3,
        "rejected": 3,
        "not_sent": 3,
        "canceled": 3,
    }


async def test_listing_filter_and_model_take_their_values_from_the_enum(client):
    schema = (await client.get("/openapi.json")).json()
    assert schema["components"]["schemas"]["MessageStatus"]["enum"] == list(STATUS_RANK)
    refused = await client.get("/api/mms", params={"status": "read"})
    assert refused.status_code == 422
    assert (await client.get("/api/mms", params={"status": "not_sent"})).status_code == 200
