"""Migrations: from nothing, from every earlier version with data in it, and failing cleanly."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

import aiosqlite
import pytest

import storage.migrations as migrations
from storage import LATEST_VERSION, Storage
from storage.files import FileStore
from storage.migrations import Migration, load_migrations, migrate

from .helpers import png, request

USER = 42
NOW = "2026-01-02T03:04:05.000000+00:00"


def seed_v1(conn: sqlite3.Connection, files: FileStore) -> None:
    """Rows as the bot wrote them at schema 1: a finished job with an init image, a queued one,
    settings and a favourite."""
    init_key = files.put(png("v1-init"), ".png")
    data = json.loads(request("A Lighthouse at dusk").to_json())
    data["init_image_file"] = init_key
    conn.execute("INSERT INTO users (id, created_at) VALUES (?, ?)", (USER, NOW))
    conn.execute("INSERT INTO settings (user_id, style, remix) VALUES (?, 'anime', 1)", (USER,))
    conn.execute(
        "INSERT INTO jobs (id, user_id, kind, request, status, channel_id, message_id, created_at, finished_at) "
        "VALUES (1, ?, 'imagine', ?, 'done', 7, 8, ?, ?)",
        (USER, json.dumps(data), NOW, NOW),
    )
    conn.execute(
        "INSERT INTO jobs (id, user_id, kind, request, status, created_at) VALUES (2, ?, 'reroll', ?, 'queued', ?)",
        (USER, request("waiting owl").to_json(), NOW),
    )
    png_key = files.put(png("v1-image"), ".png")
    conn.execute(
        "INSERT INTO images (id, job_id, idx, seed, width, height, finish_reason, png_path, parameters) "
        "VALUES (10, 1, 0, 1, 64, 64, 'ok', ?, 'params')",
        (png_key,),
    )
    conn.execute("INSERT INTO favorites (user_id, image_id, created_at) VALUES (?, 10, ?)", (USER, NOW))


PRIVATE_USER = 43


def seed_v2(conn: sqlite3.Connection, files: FileStore) -> None:
    """Schema 2 rows: those of schema 1 with their prompt column filled, as the bot then wrote it,
    and a user with private results who has a job waiting (a job did not record it yet)."""
    seed_v1(conn, files)
    conn.execute("UPDATE jobs SET prompt = json_extract(request, '$.prompt')")
    conn.execute("INSERT INTO users (id, created_at) VALUES (?, ?)", (PRIVATE_USER, NOW))
    conn.execute("INSERT INTO settings (user_id, private) VALUES (?, 1)", (PRIVATE_USER,))
    conn.execute(
        "INSERT INTO jobs (id, user_id, kind, request, prompt, status, created_at) "
        "VALUES (3, ?, 'imagine', ?, 'a secret garden', 'queued', ?)",
        (PRIVATE_USER, request("a secret garden").to_json(), NOW),
    )


def seed_v0(conn: sqlite3.Connection, files: FileStore) -> None:
    """Schema 0 is an empty database: nothing to keep."""


#: One seeder per version before the latest; a new migration needs a seeder for the version before it.
SEEDERS: dict[int, Callable[[sqlite3.Connection, FileStore], None]] = {0: seed_v0, 1: seed_v1, 2: seed_v2}


def test_there_is_a_seeder_for_every_earlier_version():
    assert set(SEEDERS) == set(range(LATEST_VERSION))


def test_migrations_are_numbered_and_split_into_statements():
    found = load_migrations()
    assert [m.version for m in found] == list(range(1, LATEST_VERSION + 1))
    assert all(m.statements() for m in found)


def test_statement_splitting_respects_quotes_and_comments():
    sql = "-- a comment; with a semicolon\nCREATE TABLE t (x TEXT DEFAULT 'a;b');\nINSERT INTO t VALUES ('c;d');\n-- end\n"
    assert Migration(9, "0009_x.sql", sql).statements() == [
        "-- a comment; with a semicolon\nCREATE TABLE t (x TEXT DEFAULT 'a;b');",
        "INSERT INTO t VALUES ('c;d');",
    ]
    with pytest.raises(ValueError, match="incomplete"):
        Migration(9, "0009_x.sql", "CREATE TABLE t (x)").statements()


@pytest.mark.parametrize("how", ["no file", "empty file"])
async def test_from_nothing(tmp_path, how):
    db = tmp_path / "imagine.sqlite3"
    if how == "empty file":
        db.write_bytes(b"")
    store = await Storage.open(db)
    try:
        assert await store.schema_version() == LATEST_VERSION
        job = await store.create_job(USER, request())
        assert (await store.history(USER, search="FOX"))[0] == [job]
    finally:
        await store.close()


async def build_at(db, version: int, files: FileStore) -> None:
    async with aiosqlite.connect(db, isolation_level=None) as conn:
        assert await migrate(conn, target=version) == version
    with sqlite3.connect(db) as conn:
        SEEDERS[version](conn, files)


@pytest.mark.parametrize("version", range(LATEST_VERSION))
async def test_from_every_earlier_version_rows_survive(tmp_path, version):
    db, data = tmp_path / "imagine.sqlite3", tmp_path / "images"
    await build_at(db, version, FileStore(data))

    store = await Storage.open(db, data)
    try:
        assert await store.schema_version() == LATEST_VERSION
        if version >= 1:
            done = await store.get_job(1)
            assert (done.status, done.channel_id, done.message_id) == ("done", 7, 8)
            assert done.request.prompt == "A Lighthouse at dusk"
            assert done.request.init_image == png("v1-init")
            (image,) = await store.job_images(1)
            assert await store.read_png(image) == png("v1-image")
            assert await store.favorites(USER) == [image]
            settings = await store.get_settings(USER)
            assert (settings.style, settings.remix) == ("anime", True)
            assert [j.id for j in await store.unfinished_jobs()] == ([2, 3] if version >= 2 else [2])
            # 0002 filled the new prompt column from the stored requests.
            found, total = await store.history(USER, search="lighthouse")
            assert ([j.id for j in found], total) == ([1], 1)
            assert (await store.history(USER))[1] == 2
            # 0003: jobs of before take their owner's private setting, so none is made public.
            assert (done.private, (await store.get_job(2)).private) == (False, False)
        if version >= 2:
            secret = await store.get_job(3)
            assert (secret.status, secret.private) == ("queued", True)
            assert (await store.history(PRIVATE_USER, search="garden"))[1] == 1
        # New rows work on the migrated schema, and ids are not reused.
        job = await store.create_job(USER, request("after the upgrade"), private=True)
        assert job.id > (3 if version >= 2 else 2 if version >= 1 else 0)
        assert (await store.get_job(job.id)).private
        assert (await store.history(USER, search="upgrade"))[1] == 1
    finally:
        await store.close()


async def test_opening_again_applies_nothing_twice(tmp_path):
    db = tmp_path / "imagine.sqlite3"
    for _ in range(2):
        store = await Storage.open(db)
        await store.create_job(USER, request())
        await store.close()
    assert sqlite3.connect(db).execute("SELECT count(*) FROM jobs").fetchone() == (2,)


async def test_a_failing_migration_rolls_back_and_keeps_the_version(tmp_path, monkeypatch):
    db = tmp_path / "imagine.sqlite3"
    store = await Storage.open(db)
    await store.create_job(USER, request())
    await store.close()

    broken = Migration(
        LATEST_VERSION + 1,
        "broken",
        "CREATE TABLE half_done (x INTEGER);\nUPDATE jobs SET kind = 'changed';\nTHIS IS NOT SQL;\n",
    )
    shipped = load_migrations()
    monkeypatch.setattr(migrations, "load_migrations", lambda: [*shipped, broken])
    with pytest.raises(sqlite3.OperationalError):
        await Storage.open(db)

    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (LATEST_VERSION,)
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'half_done'").fetchall() == []
        assert conn.execute("SELECT kind FROM jobs").fetchall() == [("imagine",)]
