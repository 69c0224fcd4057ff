"""CPU cost of recording a send, with group commit vs one commit per record.

    python benchmarks/record_cost.py [--records 5000] [--concurrency 50] [--database-url URL]

Concurrency 50 mimics 50 callers waiting for their records at once (the benchmark's
scenario 1); concurrency 1 makes every record its own transaction (no grouping).
Reports process CPU time per record (µs): the record's share of a send's CPU budget.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.store.db import Database
from app.store.repository import RecordMessage, now_ms


def _row(i: int) -> dict:
    created = now_ms()
    return {
        "id": os.urandom(16).hex(),
        "caller": "bench",
        "message_uuid": os.urandom(16).hex(),
        "api_id": os.urandom(16).hex(),
        "to_number": f"+1415555{i % 10000:04d}",
        "from_number": "+14155550000",
        "media_count": 1,
        "text": None,
        "status": "queued",
        "status_rank": 1,
        "error_code": None,
        "idempotency_key": None,
        "request_id": "r",
        "created_at": created,
        "updated_at": created,
        "next_check_at": created + 600_000,
        "checks": 0,
        "claimed_until": None,
    }


async def measure(url: str, records: int, concurrency: int) -> tuple[float, float]:
    db = Database(url)
    batches: list[int] = []
    db.writer._on_batch = lambda size, seconds: batches.append(size)
    await db.start()
    queue = iter(range(records))

    async def worker() -> None:
        for i in queue:
            await db.write(RecordMessage(_row(i)))

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await db.close()
    mean_batch = sum(batches) / len(batches)
    print(
        f"concurrency {concurrency:3d}: {cpu / records * 1e6:7.1f} µs CPU per record, "
        f"{records / wall:8.0f} records/s, mean batch {mean_batch:.1f}"
    )
    return cpu / records, mean_batch


async def measure_raw(url: str, records: int, batch: int) -> float:
    """The same rows and statements as RecordMessage, but each batch committed by one call
    to a worker thread through sqlite3 itself — what replacing SQLAlchemy over aiosqlite in
    the writer would save (benchmarks/README.md, "Why the targets are missed")."""
    import sqlite3

    db = Database(url)
    await db.start()  # the schema
    await db.close()
    assert db.sqlite_path is not None
    conn = sqlite3.connect(db.sqlite_path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    columns = list(_row(0))
    insert = f"INSERT INTO messages ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"

    def commit(rows: list[dict]) -> None:
        conn.execute("BEGIN")
        conn.executemany(insert, [tuple(r.values()) for r in rows])
        uuids = [r["message_uuid"] for r in rows]
        marks = ", ".join("?" * len(uuids))
        conn.execute(f"SELECT * FROM events WHERE message_uuid IN ({marks})", uuids).fetchall()
        conn.execute("COMMIT")

    cpu = time.process_time()
    for start in range(0, records, batch):
        await asyncio.to_thread(commit, [_row(i) for i in range(start, start + batch)])
    cpu = time.process_time() - cpu
    conn.close()
    print(f"raw sqlite3, batches of {batch:3d}: {cpu / records * 1e6:7.1f} µs CPU per record")
    return cpu / records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 50, 200])
    parser.add_argument("--database-url", default="")
    parser.add_argument(
        "--raw", action="store_true", help="also: each batch through sqlite3 in one thread call"
    )
    args = parser.parse_args()
    for concurrency in args.concurrency:
        url = args.database_url
        if not url:
            folder = Path(tempfile.mkdtemp())
            url = f"sqlite+aiosqlite:///{folder}/record.db"
        asyncio.run(measure(url, args.records, concurrency))
        if args.raw and concurrency > 1 and not args.database_url:
            folder = Path(tempfile.mkdtemp())
            asyncio.run(
                measure_raw(f"sqlite+aiosqlite:///{folder}/raw.db", args.records, concurrency)
            )


if __name__ == "__main__":
    main()
