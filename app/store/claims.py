"""The one way background work is claimed: a due-time column and a lease column per row.

Every background worker (reconciliation, the outbox, webhook delivery) keeps its work as
rows with a "due at" column (epoch ms; NULL = nothing to do) and a `claimed_until` lease
(epoch ms). A replica claims a batch of due rows whose lease is free or expired in one
statement — `FOR UPDATE SKIP LOCKED` on PostgreSQL, so concurrent claimers skip each
other's rows instead of waiting; SQLite has a single writer, so its transaction is enough.
Run through the group-commit writer, a claim commits before any work starts.

What an expired lease means is the worker's business, not this module's: the reconciler
simply looks the message up again; the outbox treats a row whose attempt had started as an
unknown outcome (never sent twice); webhook delivery retries (at least once).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection


def _due(table: Table, due: ColumnElement[Any], now: int, where: Sequence[Any]) -> Any:
    lease = table.c.claimed_until
    return and_(due <= now, lease.is_(None) | (lease < now), *where)


async def claim_due(
    conn: AsyncConnection,
    table: Table,
    *,
    due: ColumnElement[Any],
    now: int,
    batch: int,
    lease_ms: int,
    returning: Sequence[Any],
    where: Sequence[Any] = (),
) -> list[dict[str, Any]]:
    """Claim up to `batch` rows of `table` due by `now` (earliest first) for `lease_ms`.

    `due` is the row's due-time column, `where` narrows the rows further (e.g. a status),
    `returning` the columns the worker needs.
    """
    pk = next(iter(table.primary_key.columns))
    # A materialized CTE, not `IN (subquery)`: PostgreSQL may run a LIMITed subquery more
    # than once inside the UPDATE's plan, and with SKIP LOCKED each run can pick other
    # rows -- the fleet saw claims return more rows than `batch`.
    chosen = (
        select(pk.label("id"))
        .where(_due(table, due, now, where))
        .order_by(due)
        .limit(batch)
        .with_for_update(skip_locked=True)  # one replica per row (PostgreSQL)
        .cte("chosen")
        .prefix_with("MATERIALIZED")
    )
    taken: ColumnElement[bool] = pk.in_(select(chosen.c.id))
    if conn.dialect.name == "postgresql":
        # Under READ COMMITTED a row another replica claimed between the CTE and the update
        # is re-checked, not taken twice. SQLite has one writer, so nothing changes between
        # the two; there the repeated condition only misled its planner into scanning every
        # due row for the update instead of finding the chosen ones by key.
        taken = and_(taken, _due(table, due, now, where))
    result = await conn.execute(
        update(table).where(taken).values(claimed_until=now + lease_ms).returning(*returning)
    )
    return [dict(row._mapping) for row in result]


async def release(conn: AsyncConnection, table: Table, ids: Sequence[Any]) -> None:
    """Hand claims back (shutting down): another replica may take the rows at once."""
    if ids:
        pk = next(iter(table.primary_key.columns))
        await conn.execute(update(table).where(pk.in_(list(ids))).values(claimed_until=None))


async def count_due(
    conn: AsyncConnection,
    table: Table,
    *,
    due: ColumnElement[Any],
    now: int,
    where: Sequence[Any] = (),
) -> tuple[int, int | None]:
    """How many rows are due by `now` (claimed or not), and the earliest due time."""
    result = await conn.execute(
        select(func.count(), func.min(due)).select_from(table).where(due <= now, *where)
    )
    count, oldest = result.one()
    return int(count), (int(oldest) if oldest is not None else None)
