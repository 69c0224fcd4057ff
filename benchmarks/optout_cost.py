"""CPU cost of the opt-out check per send, with a large opt-out list.

    python benchmarks/optout_cost.py [--listed 100000] [--lookups 20000] [--rounds 3]
                                     [--database-url postgresql+asyncpg://...]

The send path checks the recipient with one primary-key lookup (`optouts.is_listed`:
on SQLite a plain sqlite3 connection read in the event loop; on PostgreSQL a small asyncpg
pool of its own). This loads `--listed` numbers into a fresh SQLite store (the default store,
or the `--database-url` given),
then times that call -- and, for comparison, the same lookup through SQLAlchemy's read
path (`db.read()` + `optouts.is_opted_out`) -- for numbers on the list and numbers not on
it (the common case), 50 at a time as sends run, and reports process CPU and wall time
per lookup. Compare with a send's own CPU per request
(`make bench`, or metrics_cost.py's whole-send figure) to see its share.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.store import optouts
from app.store.db import Database
from app.store.tables import optouts as optouts_table

CONCURRENCY = 50


async def load(db: Database, listed: int) -> None:
    rows = [
        {"number": f"+1{2000000000 + i}", "opted_out": True, "since": i, "source": "bench"}
        for i in range(listed)
    ]
    async with db.engine.begin() as conn:
        for start in range(0, len(rows), 10_000):
            await conn.execute(insert(optouts_table), rows[start : start + 10_000])


async def through_read_path(db: Database, number: str) -> bool:
    async with db.read() as conn:
        return await optouts.is_opted_out(conn, number)


CHECKS = {"is_listed": optouts.is_listed, "db.read()": through_read_path}


async def timed(db: Database, numbers: list[str], how: str = "is_listed") -> tuple[float, float]:
    queue = iter(numbers)
    check = CHECKS[how]

    async def worker() -> None:
        for number in queue:
            await check(db, number)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return (time.process_time() - cpu) / len(numbers), (time.perf_counter() - wall) / len(numbers)


async def main(listed: int, lookups: int, rounds: int, url: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(url or f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}")
        await db.start()
        try:
            await load(db, listed)
            hits = [f"+1{2000000000 + (i * 7919) % listed}" for i in range(lookups)]
            misses = [f"+1{3000000000 + i}" for i in range(lookups)]
            for check in CHECKS.values():
                assert await check(db, hits[0]) and not await check(db, misses[0])
                await timed(db, misses[:1000])  # warm the pool and the caches
            print(f"{listed} numbers listed, {lookups} lookups per round, {CONCURRENCY} at once")
            for how in CHECKS:
                for name, numbers in (("not listed", misses), ("listed", hits)):
                    results = [await timed(db, numbers, how) for _ in range(rounds)]
                    cpu = sorted(r[0] for r in results)
                    wall = sorted(r[1] for r in results)
                    print(
                        f"{how:>10} {name:>10}: CPU {cpu[len(cpu) // 2] * 1e6:.0f} µs/lookup "
                        f"(min {cpu[0] * 1e6:.0f}, max {cpu[-1] * 1e6:.0f}); "
                        f"wall {wall[len(wall) // 2] * 1e6:.0f} µs/lookup"
                    )
        finally:
            await db.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listed", type=int, default=100_000)
    parser.add_argument("--lookups", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--database-url",
        help="another store, e.g. postgresql+asyncpg://... (an empty scratch database: the "
        "list is loaded into it); default: a fresh SQLite file",
    )
    args = parser.parse_args()
    asyncio.run(main(args.listed, args.lookups, args.rounds, args.database_url))
