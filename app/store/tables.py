"""The store's schema (SQLAlchemy Core). Times are epoch milliseconds (sortable, portable)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)

metadata = MetaData()

# One row per send the service made (or tried and must remember).
messages = Table(
    "messages",
    metadata,
    Column("id", String(32), primary_key=True),  # the service's own id
    Column("caller", String(64), nullable=False),  # API key name: lookups are scoped to it
    Column("message_uuid", String(64), unique=True),  # Plivo's; NULL while the outcome is unknown
    Column("api_id", String(64)),
    Column("to_number", String(16), nullable=False),
    Column("from_number", String(16), nullable=False),
    Column("media_count", SmallInteger, nullable=False),
    Column("text", Text),  # only with STORE_MESSAGE_TEXT
    Column("status", String(16), nullable=False),
    Column("status_rank", SmallInteger, nullable=False),  # only rises: unknown<queued<sent<final
    Column("error_code", String(8)),
    Column("idempotency_key", String(255)),
    Column("request_id", String(128)),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("next_check_at", BigInteger),  # reconciliation: next lookup; NULL = settled
    Column("checks", Integer, nullable=False, server_default="0"),
    Column("claimed_until", BigInteger),  # lease of one replica's worker (outbox, reconciler)
    # The outbox (scheduled and asynchronous sends). `send_at` is its due time: set while
    # the message is `scheduled`, NULL otherwise (so a row is due for the outbox or for
    # reconciliation, never both). `scheduled_for` is the sendAt the caller was given
    # (give-up runs from it); `attempt_started_at` is set, committed, just before the POST:
    # a claim that finds it set belongs to a holder that died mid-send (an unknown outcome).
    Column("send_at", BigInteger),
    Column("scheduled_for", BigInteger),
    Column("attempt_started_at", BigInteger),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("cancel_reason", String(16)),  # caller | opted_out | key_removed
    Column("quiet_hours", Boolean, nullable=False, server_default=false()),
    Column("media_urls", Text),  # JSON list, kept for the outbox's send
)
Index("ix_messages_caller_created", messages.c.caller, messages.c.created_at, messages.c.id)
Index("ix_messages_caller_idempotency", messages.c.caller, messages.c.idempotency_key)
Index("ix_messages_next_check", messages.c.next_check_at)
Index("ix_messages_created", messages.c.created_at)
# Partial: only messages waiting in the outbox (a small set) are indexed.
_PENDING = messages.c.send_at.isnot(None)
Index(
    "ix_messages_send_at",
    messages.c.send_at,
    postgresql_where=_PENDING,
    sqlite_where=_PENDING,
)
Index(
    "ix_messages_caller_send_at",
    messages.c.caller,
    messages.c.send_at,
    postgresql_where=_PENDING,
    sqlite_where=_PENDING,
)

# Delivery reports (Plivo callbacks and reconciliation lookups), also for uuids not yet known.
events = Table(
    "events",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("message_uuid", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("error_code", String(8)),
    Column("sequence", Integer, nullable=False),  # Plivo's Sequence; -1 when absent
    Column("source", String(12), nullable=False),  # callback | reconcile | sandbox
    Column("plivo_time", String(40)),
    Column("received_at", BigInteger, nullable=False),
    UniqueConstraint("message_uuid", "status", "sequence", name="uq_events_dedupe"),
)
Index("ix_events_received", events.c.received_at)

# Nonces (SHA-256) of signed callbacks, kept as long as messages: a replay changes nothing,
# however late (a V2 signature does not cover the body).
callback_nonces = Table(
    "callback_nonces",
    metadata,
    Column("nonce", String(128), primary_key=True),
    Column("seen_at", BigInteger, nullable=False),
)
Index("ix_callback_nonces_seen", callback_nonces.c.seen_at)

# Idempotency-Key records, per caller, 24 h.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("caller", String(64), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("state", String(12), nullable=False),  # in_flight | done
    Column("status_code", SmallInteger),
    Column("body", Text),
    Column("headers", Text),
    Column("message_id", String(32)),
    Column("created_at", BigInteger, nullable=False),
    Column("lease_until", BigInteger, nullable=False),
    # Kept until then (a scheduled send's: its sendAt + 24 h); NULL: created_at + 24 h.
    Column("keep_until", BigInteger),
)
Index("ix_idempotency_created", idempotency_keys.c.created_at)

# Messages people sent to the sender number (Plivo's message_url). The text is kept only
# with STORE_MESSAGE_TEXT; purged with the messages (RETENTION_DAYS).
inbound_messages = Table(
    "inbound_messages",
    metadata,
    Column("message_uuid", String(64), primary_key=True),  # Plivo's: a redelivery is a no-op
    Column("from_number", String(16), nullable=False),
    Column("to_number", String(16), nullable=False),
    Column("type", String(16)),
    Column("text", Text),  # only with STORE_MESSAGE_TEXT
    Column("media_urls", Text),  # JSON list, or NULL for none
    Column("intent", String(16)),  # Plivo's MessageIntent: optout | optin | help
    Column("received_at", BigInteger, nullable=False),
)
Index("ix_inbound_received", inbound_messages.c.received_at)

# The deployment's one opt-out list: the current state per number (E.164)...
optouts = Table(
    "optouts",
    metadata,
    Column("number", String(16), primary_key=True),
    Column("opted_out", Boolean, nullable=False),
    Column("since", BigInteger, nullable=False),  # when the current state began
    # inbound | plivo_error_200 | api:<key> | cli:<user>
    Column("source", String(80), nullable=False),
)
Index("ix_optouts_since", optouts.c.since, optouts.c.number)

# ...and every change to it, kept (never purged: it is the proof of consent or its end).
optout_history = Table(
    "optout_history",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("number", String(16), nullable=False),
    Column("action", String(8), nullable=False),  # optout | optin
    Column("source", String(80), nullable=False),
    Column("at", BigInteger, nullable=False),
    Column("reference", String(255)),  # the inbound message's uuid, Plivo's uuid, or a key name
)
Index("ix_optout_history_number", optout_history.c.number, optout_history.c.at)

# Webhook deliveries: one row per event per endpoint, written in the transaction of the
# change that caused the event (the transactional outbox), then delivered by the worker
# of any replica (`next_attempt_at`: due time, NULL once final; `claimed_until`: lease).
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", String(40), primary_key=True),  # the webhook-id, the same at every attempt
    Column("endpoint", String(64), nullable=False),  # the WEBHOOKS name: a key name or `*`
    Column("caller", String(64)),  # the key whose event it is; NULL for `*` endpoints
    Column("type", String(32), nullable=False),  # message.status | message.inbound | ...
    Column("payload", Text, nullable=False),  # the body's JSON (at most 64 KiB)
    Column("text", Text),  # an inbound message's text, erased once final or 24 h old
    Column("status", String(12), nullable=False),  # pending | delivered | failed
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", BigInteger),
    Column("claimed_until", BigInteger),
    Column("last_error", String(200)),
    Column("created_at", BigInteger, nullable=False),  # the event's time
    Column("updated_at", BigInteger, nullable=False),
)
# The claim's index: `status = pending AND next_attempt_at <= now`, earliest first.
Index(
    "ix_webhook_deliveries_due", webhook_deliveries.c.status, webhook_deliveries.c.next_attempt_at
)
Index(
    "ix_webhook_deliveries_caller",
    webhook_deliveries.c.caller,
    webhook_deliveries.c.created_at,
    webhook_deliveries.c.id,
)
Index(
    "ix_webhook_deliveries_status",
    webhook_deliveries.c.status,
    webhook_deliveries.c.created_at,
)
