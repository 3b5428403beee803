"""Versioned schema migrations: numbered `NNNN_name.sql` files in this package, applied in order.

The database's `PRAGMA user_version` is the number of the last migration applied. Each migration
runs in its own `BEGIN IMMEDIATE` transaction together with the version bump, so a failed or
interrupted migration leaves the previous version intact, and two processes opening one file at
once cannot both apply the same step (the second waits, then finds the version already raised).
A migration file is never edited once released: a change is a new file.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from dataclasses import dataclass
from importlib import resources

import aiosqlite

from engine.types import ImagineError

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class SchemaTooNew(ImagineError):
    """The database was written by a newer version of the bot; running on would risk it."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    def statements(self) -> list[str]:
        """The file split into single statements (sqlite3's own completeness test, so semicolons
        inside strings or triggers are safe); `execute` runs one statement at a time and
        `executescript` would commit the surrounding transaction."""
        statements: list[str] = []
        pending = ""
        for line in self.sql.splitlines(keepends=True):
            pending += line
            if sqlite3.complete_statement(pending):
                statements.append(pending.strip())
                pending = ""
        leftover = "\n".join(
            line for line in pending.splitlines() if line.strip() and not line.strip().startswith("--")
        )
        if leftover:
            raise ValueError(f"migration {self.name} ends with an incomplete statement: {leftover[:80]!r}")
        return statements


def load_migrations() -> list[Migration]:
    """All migrations shipped with the package, checked to be numbered 1, 2, 3… without gaps."""
    found = []
    for entry in resources.files(__name__).iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..n without gaps, found {versions}")
    return found


LATEST_VERSION = len(load_migrations())


async def schema_version(conn: aiosqlite.Connection) -> int:
    async with conn.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def migrate(conn: aiosqlite.Connection, target: int | None = None) -> int:
    """Bring the database up to `target` (default: the latest) and return the version reached.

    The connection must be in autocommit mode (`isolation_level=None`): transactions here are
    explicit.
    """
    migrations = load_migrations()
    target = len(migrations) if target is None else target
    current = await schema_version(conn)
    if current > len(migrations):
        raise SchemaTooNew(
            f"The database is at schema version {current}, newer than this version of the bot "
            f"understands ({len(migrations)}). Upgrade the bot or point it at another database."
        )
    for migration in migrations[:target]:
        await conn.execute("BEGIN IMMEDIATE")
        try:
            # Read again under the write lock: another process may have migrated meanwhile.
            if await schema_version(conn) >= migration.version:
                await conn.execute("ROLLBACK")
                continue
            for statement in migration.statements():
                await conn.execute(statement)
            await conn.execute(f"PRAGMA user_version = {migration.version:d}")
            await conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                await conn.execute("ROLLBACK")
            raise
    return await schema_version(conn)
