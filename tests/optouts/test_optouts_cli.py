"""`python -m app optouts list|remove`, run as the operator would, against both stores.

One run is a real `python -m app` process; the others call the same entry point
(`app.__main__.main`) in the test process, with the same environment and argv: the
command's behaviour is the same, without a ~2 s interpreter start each.
"""

from __future__ import annotations

import getpass

import pytest

from app.store import optouts
from app.store.db import Database, FunctionOp
from app.store.repository import now_ms
from tests.helpers import app_process

NUMBER = "+14155550100"


@pytest.fixture
def cli(app_command):
    """`await cli(store_url, "list")`: `python -m app optouts list`, in this process."""
    return lambda store_url, *args: app_command(store_url, "optouts", *args)


async def _list(store_url, *numbers):
    db = Database(store_url)
    await db.start()
    try:
        for i, number in enumerate(numbers):
            op = FunctionOp(
                lambda c, n=number, i=i: optouts.change(
                    c, number=n, action="optout", source="api:alpha", at=now_ms() + i
                )
            )
            assert await db.write(op)
        async with db.read() as conn:
            return await optouts.get_entry(conn, NUMBER)
    finally:
        await db.close()


async def _entry(store_url, number=NUMBER):
    db = Database(store_url)
    await db.start()
    try:
        async with db.read() as conn:
            return await optouts.get_entry(conn, number)
    finally:
        await db.close()


async def test_list_and_remove(store_url, cli):
    await _list(store_url, NUMBER, "+14155550101")
    listed = await cli(store_url, "list")
    assert listed.returncode == 0, listed.stderr
    lines = [line.split("\t") for line in listed.stdout.splitlines() if line.startswith("+")]
    assert [line[0] for line in lines] == ["+14155550101", NUMBER]  # newest first
    assert all(line[2] == "api:alpha" for line in lines)

    removed = await cli(store_url, "remove", NUMBER)
    assert removed.returncode == 0, removed.stderr
    user = getpass.getuser()
    assert f"removed from the opt-out list by {user}" in removed.stdout
    log_line = next(
        line for line in removed.stdout.splitlines() if "optout_removed_by_operator" in line
    )
    assert "+1415***0100" in log_line and NUMBER not in log_line  # the log masks it
    assert f'"user": "{user}"' in log_line or f'"user":"{user}"' in log_line
    entry = await _entry(store_url)
    assert entry["opted_out"] is False and entry["source"] == f"cli:{user}"
    assert [h["action"] for h in entry["history"]] == ["optout", "optin"]

    listed = await cli(store_url, "list")
    assert NUMBER not in listed.stdout and "+14155550101" in listed.stdout

    again = await cli(store_url, "remove", NUMBER)  # not listed any more: nothing changes
    assert again.returncode == 1 and "not on the opt-out list" in again.stderr
    assert len((await _entry(store_url))["history"]) == 2


async def test_bad_arguments(sqlite_url, cli):
    assert (await cli(sqlite_url, "remove", "+112015550177")).returncode == 2
    assert (await cli(sqlite_url, "remove")).returncode == 2
    assert (await cli(sqlite_url, "drop")).returncode == 2


@pytest.mark.e2e
def test_the_command_as_a_process(sqlite_url):
    """The real `python -m app optouts list`: exits 0, and lists nothing on an empty list."""
    empty = app_process(sqlite_url, "optouts", "list")
    assert empty.returncode == 0, empty.stderr
    assert not [x for x in empty.stdout.splitlines() if x[:1] == "+"]
