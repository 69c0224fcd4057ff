"""Store faults: the service knows when it cannot write, and never spends money on a message
it cannot record, nor sends one twice because a record was lost.

The faults are real: a SQLite file deleted or moved away under a running `python -m app`,
and PostgreSQL cut off through a TCP proxy the test owns. Plivo is the fake on loopback;
its POST counter is the proof that a refused send never reached it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event, select, text
from sqlalchemy.exc import NoResultFound, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from app.store import db as store_db
from app.store.db import FunctionOp, GroupCommitWriter, RecordPending, StoreUnavailable
from tests import fakeplivo as fp
from tests.helpers import API_KEYS, KEY_A, VALID, keyed, psql, wait_for
from tests.helpers import post_send as post
from tests.loopback import http_get
from tests.signing import FORM, form, v3_headers
from tests.tcpproxy import TcpProxy

A = {"X-API-Key": KEY_A}
OTHER = {**VALID, "to": "+14155550101"}
# A lease short enough to wait for: deadline 3 s + grace 1 s + the 5 s margin.
SHORT_LEASE = {"PLIVO_TIMEOUT_SECONDS": 3, "SHUTDOWN_GRACE_SECONDS": 1}
LEASE_SECONDS = 9
PLIVO_HOLDS_SECONDS = 1.5  # time for the test to break the store while a send is in flight


def ready(server: Any) -> httpx.Response:
    return http_get(f"{server.url}/ready", timeout=10)


def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "service_unavailable"
    assert int(response.headers["retry-after"]) >= 1


def send_in_flight(
    pool: concurrent.futures.Executor, server: Any, fake: fp.FakePlivo, key: str
) -> concurrent.futures.Future[httpx.Response]:
    """A keyed send that Plivo holds for a while: returns once Plivo has the request (the
    key is taken and committed by then), while the send is still in flight."""
    before = len(fake.sends())
    fake.script(fp.ok(delay=PLIVO_HOLDS_SECONDS))
    future = pool.submit(post, server, VALID, keyed(key))
    wait_for(lambda: len(fake.sends()) == before + 1)
    return future


def assert_no_second_send(server: Any, key: str) -> None:
    """A key taken before a send whose record was lost: 409 while its lease runs (a slow
    restart may outlive it), then a stored unknown outcome, replayed as 504."""
    deadline = time.monotonic() + LEASE_SECONDS + 5
    while True:
        response = post(server, VALID, keyed(key))
        if response.status_code != 409 or time.monotonic() > deadline:
            break
        assert response.json()["code"] == "idempotency_in_progress"
        time.sleep(0.5)
    assert response.status_code == 504, response.text
    assert response.json()["code"] == "upstream_timeout"
    assert response.headers["idempotent-replayed"] == "true"


def sends_for(fake: fp.FakePlivo, to: str = VALID["to"]) -> int:
    return sum(1 for call in fake.sends() if call.json and call.json.get("dst") == to)


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    p = TcpProxy("127.0.0.1", 5432).start()
    yield p
    p.stop()


# Row 4 (SQLite) -----------------------------------------------------------------------------
@pytest.mark.slow
def test_row4_sqlite_file_deleted_refuses_sends_before_plivo_and_never_sends_twice(
    server_factory, fake_plivo, tmp_path
):
    """Row 4: the SQLite file deleted under a running service. /ready turns 503, new sends
    are refused before Plivo (no 200 for a send that cannot be recorded); the send in
    flight answers 200 (Plivo has it) and its record is kept in memory; after a restart on
    the restored file the keyed retry is a stored unknown outcome, never a second send."""
    server = server_factory(API_KEYS=API_KEYS, **SHORT_LEASE)
    assert post(server, OTHER, keyed("before")).status_code == 200
    database = tmp_path / "mms.db"
    backup = tmp_path / "backup.db"
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        in_flight = send_in_flight(pool, server, fake_plivo, "in-flight")
        # The operator's backup (with the key taken), then the file is deleted.
        with sqlite3.connect(database) as live, sqlite3.connect(backup) as copy:
            live.backup(copy)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{database}{suffix}").unlink(missing_ok=True)
        response = in_flight.result(30)
    assert response.status_code == 200  # Plivo queued it: an error would invite a resend
    posts = len(fake_plivo.sends())
    assert posts == 2

    not_ready = ready(server)
    assert not_ready.status_code == 503 and "cannot be written" in not_ready.json()["detail"]
    assert_refused(post(server))
    assert_refused(post(server, OTHER, keyed("new-key")))
    assert_refused(post(server, VALID, keyed("in-flight")))
    assert len(fake_plivo.sends()) == posts  # nothing reached Plivo
    time.sleep(1.5)  # the probe runs, and keeps failing: the file is gone
    assert ready(server).status_code == 503
    assert_refused(post(server))
    logs = server.logs()
    assert '"record_pending"' in logs and '"store_write_failed"' in logs

    server.kill()  # the kept record dies with the process: the key's lease covers it
    os.replace(backup, database)
    restarted = server_factory(API_KEYS=API_KEYS, **SHORT_LEASE)
    assert_no_second_send(restarted, "in-flight")
    before = post(restarted, OTHER, keyed("before"))
    assert before.status_code == 200 and before.headers["idempotent-replayed"] == "true"
    assert len(fake_plivo.sends()) == posts  # no double send, for either key
    assert sends_for(fake_plivo) == 1


def test_row4_sqlite_file_back_in_place_writes_the_kept_record_and_sends_resume(
    server_factory, fake_plivo, tmp_path
):
    """Row 4: the file moved away (as deleted, for the service) and put back. The probe
    finds it, writes the kept record of the send that was in flight, and sends resume;
    the keyed retry replays the 200, before and after a restart, with one Plivo call."""
    server = server_factory(API_KEYS=API_KEYS)
    database = tmp_path / "mms.db"
    moved = tmp_path / "moved.db"
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        in_flight = send_in_flight(pool, server, fake_plivo, "in-flight")
        os.rename(database, moved)
        response = in_flight.result(30)
    assert response.status_code == 200
    original = response.json()
    assert ready(server).status_code == 503
    assert_refused(post(server, OTHER))
    assert len(fake_plivo.sends()) == 1

    os.rename(moved, database)
    wait_for(lambda: ready(server).status_code == 200)  # the background probe
    logs = server.logs()
    assert '"record_written_late"' in logs and '"store_write_recovered"' in logs
    replay = post(server, VALID, keyed("in-flight"))
    assert replay.status_code == 200 and replay.json() == original
    assert replay.headers["idempotent-replayed"] == "true"
    looked_up = http_get(f"{server.url}/api/mms/{original['messageUuid'][0]}", headers=A)
    assert looked_up.status_code == 200 and looked_up.json()["status"] == "queued"
    assert post(server, OTHER).status_code == 200
    assert len(fake_plivo.sends()) == 2

    assert server.terminate() == 0
    restarted = server_factory(API_KEYS=API_KEYS)
    again = post(restarted, VALID, keyed("in-flight"))
    assert again.status_code == 200 and again.json() == original
    assert sends_for(fake_plivo) == 1


async def test_row4_a_send_looks_at_the_sqlite_file_at_most_once_per_interval(
    sqlite_url, monkeypatch
):
    """Row 4: `writable` (every send's pre-check) stats the file at most once per
    FILE_CHECK_SECONDS -- a stat on the event loop hands the GIL to the writer's thread --
    and still finds a deleted file at the next look."""
    database = sqlite_url.split("///", 1)[1]
    db = store_db.Database(sqlite_url)
    await db.start()
    stats: list[str] = []
    real_stat = os.stat

    def counting_stat(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path) == database:
            stats.append(str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(store_db.os, "stat", counting_stat)
    try:
        assert db.writable and db.writable and db.writable
        assert len(stats) == 1
        await asyncio.to_thread(os.rename, database, f"{database}.gone")
        db._file_checked_at -= store_db.FILE_CHECK_SECONDS  # the interval has passed
        assert not db.writable
        assert len(stats) == 2
    finally:
        monkeypatch.setattr(store_db.os, "stat", real_stat)
        await db.close()


# Row 4 (PostgreSQL) -------------------------------------------------------------------------
def test_row4_postgres_down_refuses_before_plivo_and_writes_the_kept_record_on_return(
    server_factory, fake_plivo, postgres_url, proxy
):
    """Row 4: PostgreSQL stops mid-send. The send in flight answers 200 and its record is
    kept; /ready is 503 and new sends are refused before Plivo while the store is down;
    when it returns the probe writes the record and the keyed retry replays it."""
    server = server_factory(API_KEYS=API_KEYS, DATABASE_URL=proxy.url_for(postgres_url))
    assert post(server, OTHER, keyed("before")).status_code == 200
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        in_flight = send_in_flight(pool, server, fake_plivo, "in-flight")
        proxy.cut()
        response = in_flight.result(30)
    assert response.status_code == 200
    original = response.json()
    posts = len(fake_plivo.sends())

    assert ready(server).status_code == 503
    assert_refused(post(server))
    assert_refused(post(server, OTHER, keyed("new-key")))
    assert len(fake_plivo.sends()) == posts
    assert '"record_pending"' in server.logs()

    proxy.restore()
    wait_for(lambda: ready(server).status_code == 200)
    assert '"record_written_late"' in server.logs()
    replay = post(server, VALID, keyed("in-flight"))
    assert replay.status_code == 200 and replay.json() == original
    assert replay.headers["idempotent-replayed"] == "true"
    assert post(server, OTHER).status_code == 200
    assert len(fake_plivo.sends()) == posts + 1
    assert sends_for(fake_plivo) == 1


@pytest.mark.slow
def test_row4_postgres_down_then_restart_replays_unknown_never_sends_twice(
    server_factory, fake_plivo, postgres_url, proxy
):
    """Row 4: the process dies while the record of an accepted send waits for PostgreSQL.
    After the restart the key taken before the send turns, once its lease has passed, into
    a stored unknown outcome (504, replayed): never a second send."""
    url = proxy.url_for(postgres_url)
    server = server_factory(API_KEYS=API_KEYS, DATABASE_URL=url, **SHORT_LEASE)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        in_flight = send_in_flight(pool, server, fake_plivo, "in-flight")
        proxy.cut()
        assert in_flight.result(30).status_code == 200
    assert_refused(post(server, VALID, keyed("in-flight")))
    assert_refused(post(server, OTHER))  # unkeyed: no write before Plivo, refused all the same
    assert len(fake_plivo.sends()) == 1
    server.kill()
    proxy.restore()
    restarted = server_factory(API_KEYS=API_KEYS, DATABASE_URL=url, **SHORT_LEASE)
    assert_no_second_send(restarted, "in-flight")
    assert len(fake_plivo.sends()) == 1


# Row 4 (kept records hold sends and callbacks back) ----------------------------------------
PUBLIC = "https://mms.example.com"


async def test_row4_kept_record_refuses_sends_and_callbacks_until_written(
    settings_factory, client_for, fake_plivo, sqlite_url, monkeypatch
):
    """Row 4: while a send's record waits in memory, even with the store back, new sends
    are 503 before Plivo and Plivo's callbacks are 503 (Plivo retries them); once the
    record is written, both go through."""
    monkeypatch.setattr(store_db, "PROBE_SECONDS", 3600.0)  # rounds run when the test says
    database = Path(sqlite_url.split("///", 1)[1])
    settings = settings_factory(public_base_url=PUBLIC)
    async with client_for(settings) as client:
        db = client.services.db
        fake_plivo.script(fp.ok(delay=0.5, uuid="4a1c1c1e-0000-4000-8000-000000000001"))
        sending = asyncio.create_task(client.post("/api/mms/send", json=VALID))
        await asyncio.to_thread(wait_for, lambda: bool(fake_plivo.sends()))
        moved = database.with_suffix(".moved")
        await asyncio.to_thread(os.rename, database, moved)
        assert (await sending).status_code == 200
        await asyncio.to_thread(os.rename, moved, database)  # the store is back...
        assert db.records_pending == 1  # ...but the record still waits
        params = {"MessageUUID": "4a1c1c1e-0000-4000-8000-000000000001", "Status": "sent"}
        url = f"{PUBLIC}/api/mms/status"
        callback = await client.post(
            "/api/mms/status", content=form(params), headers={**FORM, **v3_headers(url, params)}
        )
        assert callback.status_code == 503 and callback.json()["code"] == "service_unavailable"
        assert_refused(await client.post("/api/mms/send", json=OTHER))
        assert (await client.get("/ready")).status_code == 503
        assert len(fake_plivo.sends()) == 1

        await db.writer.flush()  # one probe round
        assert db.records_pending == 0 and db.writable
        callback = await client.post(
            "/api/mms/status", content=form(params), headers={**FORM, **v3_headers(url, params)}
        )
        assert callback.status_code == 200
        looked_up = await client.get(f"/api/mms/{params['MessageUUID']}")
        assert looked_up.json()["status"] == "sent"
        assert (await client.post("/api/mms/send", json=OTHER)).status_code == 200
        assert (await client.get("/ready")).status_code == 200


# Row 7 --------------------------------------------------------------------------------------
async def test_row7_postgres_unreachable_on_reads_is_503_not_500(
    settings_factory, client_for, fake_plivo, postgres_url, proxy
):
    """Row 7: a store outage on a read (connection refused) is 503 service_unavailable."""
    settings = settings_factory(database_url=proxy.url_for(postgres_url))
    async with client_for(settings) as client:
        sent = await client.post("/api/mms/send", json=VALID)
        uuid = sent.json()["messageUuid"][0]
        assert (await client.get(f"/api/mms/{uuid}")).status_code == 200
        proxy.cut()
        for path in ("/api/mms", f"/api/mms/{uuid}"):
            response = await client.get(path)
            assert response.status_code == 503, response.text
            assert response.json()["code"] == "service_unavailable"
            assert int(response.headers["retry-after"]) >= 1
        proxy.restore()
        assert (await client.get(f"/api/mms/{uuid}")).status_code == 200


async def test_row7_postgres_unreachable_at_the_opt_out_check_is_503_before_plivo(
    settings_factory, client_for, fake_plivo, postgres_url, proxy
):
    """Row 7 on the send path: the opt-out check (its own asyncpg connections) finds
    PostgreSQL unreachable before any write failed: 503 service_unavailable, nothing sent;
    once PostgreSQL is back the check reconnects and sends go through again."""
    settings = settings_factory(database_url=proxy.url_for(postgres_url))
    async with client_for(settings) as client:
        assert (await client.post("/api/mms/send", json=VALID)).status_code == 200
        posts = len(fake_plivo.sends())
        proxy.cut()
        response = await client.post("/api/mms/send", json=OTHER)
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "service_unavailable"
        assert int(response.headers["retry-after"]) >= 1
        assert len(fake_plivo.sends()) == posts  # refused before Plivo
        proxy.restore()
        response = await client.post("/api/mms/send", json=OTHER)
        assert response.status_code == 200, response.text


# Row 10 -------------------------------------------------------------------------------------
@pytest.fixture
async def scratch_writer(sqlite_url: str) -> Any:
    """A writer on the service's SQLite schema (its probe writes there) plus a table `t`."""
    engine = create_async_engine(sqlite_url)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)"))
    batches: list[int] = []
    writer = GroupCommitWriter(engine, on_batch=lambda size, _: batches.append(size))
    writer.start()
    yield writer, engine, batches
    await writer.close()
    await engine.dispose()


def _insert(value: int) -> FunctionOp:
    async def run(conn: AsyncConnection) -> int:
        await conn.execute(text("INSERT INTO t (id, v) VALUES (:i, 'x')"), {"i": value})
        return value

    return FunctionOp(run)


def _fails(exc: Exception) -> FunctionOp:
    async def run(conn: AsyncConnection) -> None:
        await conn.execute(text("INSERT INTO t (id, v) VALUES (1000, 'doomed')"))
        raise exc

    return FunctionOp(run)


async def _stored(engine: Any) -> list[int]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(text("id")).select_from(text("t")).order_by(text("id")))
        return [row[0] for row in rows]


async def test_row10_writer_one_failing_op_fails_alone(scratch_writer):
    """Row 10: one op of a group-commit batch fails (e.g. NoResultFound from a lost race):
    it alone gets the error; the others of its batch still commit, in their order."""
    writer, engine, batches = scratch_writer
    ops = [_insert(i) for i in range(3)] + [_fails(NoResultFound())] + [_insert(i) for i in (3, 4)]
    results = await asyncio.gather(*(writer.submit(op) for op in ops), return_exceptions=True)
    assert results[:3] == [0, 1, 2] and results[4:] == [3, 4]
    assert isinstance(results[3], StoreUnavailable) and not isinstance(results[3], RecordPending)
    assert await _stored(engine) == [0, 1, 2, 3, 4]  # the failing op's own insert rolled back
    assert not writer.failing  # a refused op is not a store fault
    assert sum(batches) == 5


async def test_row10_writer_outage_fails_the_batch_at_once(scratch_writer):
    """Row 10's counterpart: a database that is down fails the whole batch at once, without
    running the ops one by one, and puts the writer in the failed state."""
    writer, _, batches = scratch_writer
    runs: list[int] = []

    def counted(i: int) -> FunctionOp:
        async def run(conn: AsyncConnection) -> None:
            runs.append(i)
            if i == 2:
                raise OperationalError("INSERT", {}, Exception("disk I/O error"))

        return FunctionOp(run)

    results = await asyncio.gather(
        *(writer.submit(counted(i)) for i in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, StoreUnavailable) for r in results)
    assert runs == [0, 1, 2]  # one attempt, stopped at the failure
    assert writer.failing and batches == []
    await writer.flush()  # the probe's write commits: the store is back
    assert not writer.failing


async def test_row10_key_released_by_another_replica_mid_take_proceeds_never_503(
    settings_factory, client_for, fake_plivo, postgres_url
):
    """Row 10: two replicas on PostgreSQL race one Idempotency-Key while Plivo answers 401.
    The race, forced: another replica holds the key when ours tries to take it, and
    releases it (its send got 401: not stored) between our INSERT and our SELECT. Ours
    takes the key and proceeds (Plivo's 401 is 502 upstream_auth_failed), never a 503."""
    role = postgres_url.split("//")[1].split("@")[0]
    fake_plivo.set_default(fp.status(401))
    async with client_for(settings_factory(database_url=postgres_url)) as client:
        now = int(time.time() * 1000)
        psql(
            f"INSERT INTO {role}.idempotency_keys (caller, key, fingerprint, state, message_id,"
            f" created_at, lease_until) VALUES ('anonymous', 'raced', 'f', 'in_flight', 'other',"
            f" {now}, {now + 60_000})"
        )
        released: list[str] = []

        def release_after_our_insert(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            if "INSERT INTO idempotency_keys" in statement and not released:
                released.append(psql(f"DELETE FROM {role}.idempotency_keys WHERE key = 'raced'"))

        engine = client.services.db.engine.sync_engine
        event.listen(engine, "after_cursor_execute", release_after_our_insert)
        response = await client.post(
            "/api/mms/send", json=VALID, headers={"Idempotency-Key": "raced"}
        )
        event.remove(engine, "after_cursor_execute", release_after_our_insert)
    assert released  # the race happened
    assert response.status_code == 502, response.text
    assert response.json()["code"] == "upstream_auth_failed"
    assert len(fake_plivo.sends()) == 1


async def test_row4_kept_record_still_unwritten_at_shutdown_is_logged_as_lost(
    sqlite_url, capfd, monkeypatch
):
    """Row 4: a kept record that the store never took is the last trace of a message Plivo
    has: stopping the service logs it (ids only), it does not vanish silently."""
    monkeypatch.setattr(store_db, "PROBE_SECONDS", 3600.0)
    database = sqlite_url.split("///", 1)[1]
    db = store_db.Database(sqlite_url)
    await db.start()
    op = FunctionOp(lambda conn: conn.execute(text("SELECT 1")))
    op.row = {"id": "m-kept", "message_uuid": "u-kept", "text": "secret-text-4711"}  # type: ignore[attr-defined]
    await asyncio.to_thread(os.rename, database, f"{database}.gone")
    with pytest.raises(RecordPending):
        await db.write(op, keep=True)
    assert not db.writable and db.records_pending == 1
    await db.close()
    output = capfd.readouterr().out
    assert "record_lost" in output and "m-kept" in output and "u-kept" in output
    assert "secret-text-4711" not in output
