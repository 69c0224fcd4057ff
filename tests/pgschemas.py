"""Private PostgreSQL schemas for the tests: migrated once, emptied between tests.

Each test gets a role and a schema of the same name (PostgreSQL's default search_path,
`"$user", public`, then puts the service's tables there with nothing but the URL
configured). Making and dropping one per test, with an Alembic migration in between, cost
~0.4 s on each of ~170 tests. Instead each test process keeps a few such schemas: one is
migrated by the service's own code, the others are copies of it (its `pg_dump`, replayed),
and a schema a test has finished with is emptied (its rows deleted, its sequences reset,
whatever is still connected as its role cut off) before the next test gets it. Both are
done for several schemas per `psql` run. The service finds its schema at HEAD and
migrates nothing. Tests of the migrations themselves get an empty schema of their own.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading

HOST, USER, DATABASE = "127.0.0.1", "postgres", "test"
BATCH = 4  # schemas made, or emptied, per psql run
PSQL = ("psql", "-h", HOST, "-U", USER, "-d", DATABASE)
DUMP = ("pg_dump", "-h", HOST, "-U", USER, "-d", DATABASE)


def _url(name: str) -> str:
    return f"postgresql+asyncpg://{name}@{HOST}:5432/{DATABASE}"


def _role(url: str) -> str:
    return url.split("//")[1].split("@")[0]


def _new_name() -> str:
    return "t_" + os.urandom(6).hex()


def _create(name: str) -> str:
    return f"CREATE ROLE {name} LOGIN; CREATE SCHEMA {name} AUTHORIZATION {name};\n"


def _disconnect(names: list[str]) -> str:
    listed = ", ".join(f"'{n}'" for n in names)
    return f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename IN ({listed});\n"


def run_script(sql: str) -> str:
    """Run a script as the superuser, in one transaction; returns what it printed."""
    result = subprocess.run(
        [*PSQL, "-v", "ON_ERROR_STOP=1", "-1", "-qAt", "-f", "-"],
        input=sql,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout


def _migrate(url: str) -> None:
    """The service's own migration (app/store/migrate.py), on a thread with its own loop."""
    from app.store.db import Database

    async def run() -> None:
        db = Database(url)
        await db.start()
        await db.close()

    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(run())
        except BaseException as exc:  # re-raised in the caller
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


class SchemaPool:
    """Migrated schemas for one test process."""

    def __init__(self) -> None:
        self._template = ""
        self._ddl = ""  # the template as SQL; empty without pg_dump (then the service migrates)
        self._tables: list[str] = []
        self._sequences: list[str] = []
        self._free: list[str] = []
        self._used: list[str] = []  # finished with: emptied before they are handed out again
        self._empty: list[str] = []  # not reused

    def _prepare(self) -> None:
        name = self._template = _new_name()
        run_script(_create(name))
        _migrate(_url(name))
        self._tables = run_script(
            "SELECT table_name FROM information_schema.tables"
            f" WHERE table_schema = '{name}' AND table_name <> 'alembic_version';"
        ).split()
        self._sequences = run_script(
            f"SELECT sequence_name FROM information_schema.sequences WHERE sequence_schema = '{name}';"
        ).split()
        if shutil.which("pg_dump") is None:
            return
        dump = subprocess.run(
            [*DUMP, "--schema", name, "--inserts", "--no-owner", "--no-privileges"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        # psql meta-commands (`\restrict`) and the schema itself (made with its owner) go.
        lines = [line for line in dump.splitlines() if not line.startswith("\\")]
        self._ddl = "\n".join(lines).replace(f"CREATE SCHEMA {name};", "")

    def _emptied(self, names: list[str]) -> str:
        script = _disconnect(names)
        for name in names:
            script += f"ALTER ROLE {name} LOGIN;"  # a test may have locked it out
            script += "".join(f"DELETE FROM {name}.{table};" for table in self._tables)
            script += "".join(f"SELECT setval('{name}.{s}', 1, false);" for s in self._sequences)
            script += "\n"
        return script

    def migrated(self) -> str:
        """A schema at the migrations' head with no rows, for this test alone; its URL."""
        if not self._template:
            self._prepare()
        if not self._free:
            if self._used and self._ddl:
                run_script(self._emptied(self._used))
                self._free, self._used = self._used, []
            else:
                names = [_new_name() for _ in range(BATCH)]
                script = ""
                for name in names:
                    ddl = self._ddl.replace(self._template, name)
                    script += f"{_create(name)}SET ROLE {name};\n{ddl}\nRESET ROLE;\n"
                run_script(script)
                self._free = names
        return _url(self._free.pop())

    def empty(self) -> str:
        """A new schema with nothing in it (for tests of the migrations); its URL."""
        name = _new_name()
        run_script(_create(name))
        self._empty.append(name)
        return _url(name)

    def finished(self, url: str) -> None:
        name = _role(url)
        if name not in self._empty:
            self._used.append(name)

    def close(self) -> None:
        names = self._used + self._free + self._empty + [self._template]
        names = [n for n in names if n]
        if names:
            run_script(
                _disconnect(names)
                + "".join(f"DROP SCHEMA {n} CASCADE; DROP ROLE {n};\n" for n in names)
            )
        self._used, self._free, self._empty, self._template = [], [], [], ""
