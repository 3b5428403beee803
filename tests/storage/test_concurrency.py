"""Concurrent writers: two connections on one file (as two bot processes would be), many tasks on
one connection, and a writer that holds SQLite's lock for a while. Nothing may be lost."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

from storage import Storage

from .helpers import request, results

PER_WRITER = 40


async def test_two_connections_writing_at_once_lose_nothing(tmp_path):
    db = tmp_path / "imagine.sqlite3"
    first, second = await Storage.open(db), await Storage.open(db)
    try:

        async def write(store: Storage, user: int) -> list[int]:
            ids = []
            for n in range(PER_WRITER):
                job = await store.create_job(user, request(f"user {user} job {n}"))
                await store.mark_running(job.id)
                await store.finish_job(job.id, results(f"{user}-{n}", seeds=(n,)))
                await store.update_settings(user, quality=float(n))
                ids.append(job.id)
            return ids

        ids_a, ids_b = await asyncio.gather(write(first, 1), write(second, 2))
        assert len(set(ids_a) | set(ids_b)) == 2 * PER_WRITER
        for store in (first, second):
            for user, ids in ((1, ids_a), (2, ids_b)):
                jobs, total = await store.history(user, per_page=100)
                assert total == PER_WRITER
                assert sorted(j.id for j in jobs) == sorted(ids)
                assert {j.status for j in jobs} == {"done"}
                assert (await store.get_settings(user)).quality == float(PER_WRITER - 1)
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM images").fetchone() == (2 * PER_WRITER,)
    finally:
        await first.close()
        await second.close()


async def test_many_tasks_on_one_connection_keep_their_transactions_apart(tmp_path):
    store = await Storage.open(tmp_path / "imagine.sqlite3")
    try:
        jobs = await asyncio.gather(*(store.create_job(n % 3, request(f"job {n}")) for n in range(30)))
        finished = await asyncio.gather(*(store.finish_job(j.id, results(f"r{j.id}")) for j in jobs))
        assert all(len(records) == 4 for records in finished)
        toggles = await asyncio.gather(*(store.toggle_favorite(7, records[0].id) for records in finished))
        assert toggles == [True] * 30
        assert len(await store.favorites(7)) == 30
    finally:
        await store.close()


async def test_a_writer_waits_for_another_process_holding_the_lock(tmp_path):
    db = tmp_path / "imagine.sqlite3"
    store = await Storage.open(db)
    locked, release = threading.Event(), threading.Event()

    def hold_write_lock() -> None:
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO users (id, created_at) VALUES (99, 'then')")
        locked.set()
        release.wait(5)
        conn.execute("COMMIT")
        conn.close()

    holder = threading.Thread(target=hold_write_lock)
    holder.start()
    try:
        await asyncio.to_thread(locked.wait, 5)
        writing = asyncio.ensure_future(store.create_job(1, request()))
        await asyncio.sleep(0.3)
        assert not writing.done()  # waiting for the lock, not failing with "database is locked"
        release.set()
        job = await asyncio.wait_for(writing, 5)
        assert (await store.get_job(job.id)).status == "queued"
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT id FROM users ORDER BY id").fetchall() == [(1,), (99,)]
    finally:
        release.set()
        await asyncio.to_thread(holder.join)
        await store.close()
