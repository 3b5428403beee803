"""Storage behaviour: settings, the job lifecycle, images and their files, history, favourites."""

from __future__ import annotations

import json
import sqlite3

import pytest

from engine.params import PromptDefaults
from storage import (
    LATEST_VERSION,
    ImageNotFound,
    JobNotFound,
    JobStateError,
    MissingFile,
    SchemaTooNew,
    Storage,
    UserSettings,
)

from .helpers import png, request, results

ALICE, BOB = 111_111_111_111_111_111, 222_222_222_222_222_222  # Discord-sized ids


@pytest.fixture
async def store(tmp_path):
    storage = await Storage.open(tmp_path / "db" / "imagine.sqlite3")
    yield storage
    await storage.close()


def raw(path, sql, params=()):
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, params).fetchall()


async def test_open_prepares_the_database_and_its_folders(tmp_path):
    db = tmp_path / "new" / "nested" / "imagine.sqlite3"
    store = await Storage.open(db)
    try:
        assert await store.schema_version() == LATEST_VERSION
        assert store.files.root == db.parent / "images"
        assert store.files.root.is_dir()
        assert raw(db, "PRAGMA journal_mode") == [("wal",)]
        async with store._conn.execute("PRAGMA foreign_keys") as cursor:
            assert await cursor.fetchone() == (1,)
    finally:
        await store.close()


async def test_an_explicit_data_dir_is_used(tmp_path):
    store = await Storage.open(tmp_path / "imagine.sqlite3", data_dir=tmp_path / "pictures")
    try:
        key = await store.store_upload(png("x"))
        assert (tmp_path / "pictures" / key).is_file()
    finally:
        await store.close()


async def test_a_database_from_a_newer_bot_is_refused(tmp_path):
    db = tmp_path / "imagine.sqlite3"
    raw(db, f"PRAGMA user_version = {LATEST_VERSION + 1}")
    with pytest.raises(SchemaTooNew, match=f"version {LATEST_VERSION + 1}"):
        await Storage.open(db)


# -- settings ------------------------------------------------------------------------------------


async def test_settings_default_then_change_field_by_field(store):
    assert await store.get_settings(ALICE) == UserSettings(ALICE)
    changed = await store.update_settings(ALICE, aspect_ratio="16:9", quality=2, remix=1)
    assert changed == UserSettings(ALICE, aspect_ratio="16:9", quality=2.0, remix=True)
    changed = await store.update_settings(ALICE, negative_prompt="text", private=True, aspect_ratio=None)
    assert changed == UserSettings(ALICE, quality=2.0, negative_prompt="text", remix=True, private=True)
    assert await store.get_settings(ALICE) == changed
    assert await store.get_settings(BOB) == UserSettings(BOB)


async def test_an_unknown_setting_is_refused_and_nothing_changes(store):
    await store.update_settings(ALICE, style="anime")
    with pytest.raises(ValueError, match="unknown setting.*steps"):
        await store.update_settings(ALICE, style="photo", steps=3)
    assert (await store.get_settings(ALICE)).style == "anime"


async def test_users_are_created_on_first_settings_or_job(store):
    await store.get_settings(ALICE)
    assert raw(store.db_path, "SELECT id FROM users") == []
    await store.update_settings(ALICE, style="anime")
    await store.create_job(BOB, request())
    assert raw(store.db_path, "SELECT id FROM users ORDER BY id") == [(ALICE,), (BOB,)]


def test_settings_become_prompt_defaults():
    settings = UserSettings(
        ALICE, aspect_ratio="3:2", quality=0.5, negative_prompt="blur", style="anime", model="m"
    )
    assert settings.to_defaults() == PromptDefaults(
        aspect_ratio="3:2", quality=0.5, negative_prompt="blur", style="anime", model="m"
    )


# -- jobs ----------------------------------------------------------------------------------------


async def test_a_job_round_trips_with_its_image_bytes_kept_out_of_the_row(store):
    init, mask = png("init"), png("mask")
    asked = request(init_image=init, mask=mask, strength=0.4)
    job = await store.create_job(ALICE, asked, kind="vary", guild_id=5, channel_id=6)
    assert (job.status, job.kind, job.user_id, job.guild_id, job.channel_id) == (
        "queued",
        "vary",
        ALICE,
        5,
        6,
    )

    (stored_json,) = raw(store.db_path, "SELECT request FROM jobs WHERE id = ?", (job.id,))[0]
    stored = json.loads(stored_json)
    assert stored["init_image"] is None and stored["mask"] is None
    assert store.files.get(stored["init_image_file"]) == init
    assert store.files.get(stored["mask_file"]) == mask
    assert len(stored_json) < 1000

    loaded = await store.get_job(job.id)
    assert loaded == job
    assert loaded.request == asked
    assert await store.get_job(job.id + 1000) is None


async def test_a_job_keeps_whether_it_was_private_whatever_the_setting_says_later(store):
    public = await store.create_job(ALICE, request("for everyone"))
    private = await store.create_job(ALICE, request("only for me"), private=True)
    assert (public.private, private.private) == (False, True)

    await store.update_settings(ALICE, private=True)  # the setting changes; the jobs do not
    assert (await store.get_job(public.id)).private is False
    await store.update_settings(ALICE, private=False)
    assert [(j.id, j.private) for j in await store.unfinished_jobs()] == [(public.id, False), (private.id, True)]
    assert [j.private for j in (await store.history(ALICE))[0]] == [True, False]
    assert raw(store.db_path, "SELECT private FROM jobs ORDER BY id") == [(0,), (1,)]


async def test_the_same_init_image_is_stored_once(store):
    init = png("shared")
    await store.create_job(ALICE, request(init_image=init))
    await store.create_job(BOB, request("another", init_image=init))
    assert len([p for p in store.files.root.rglob("*") if p.is_file()]) == 1
    assert await store.store_upload(init) == store.files.key_for(init, ".png")


async def test_a_job_whose_init_image_file_vanished_is_reported(store):
    job = await store.create_job(ALICE, request(init_image=png("gone")))
    key = store.files.key_for(png("gone"), ".png")
    store.file_path(key).unlink()
    with pytest.raises(MissingFile):
        await store.get_job(job.id)
    (resumable,) = await store.unfinished_jobs()
    assert resumable.id == job.id
    assert resumable.missing_files == (key,)
    assert resumable.request.init_image is None


async def test_lifecycle_queued_running_done(store):
    job = await store.create_job(ALICE, request())
    await store.set_message(job.id, channel_id=77, message_id=88)
    await store.mark_running(job.id)
    running = await store.get_job(job.id)
    assert running.status == "running" and running.started_at is not None
    assert (running.channel_id, running.message_id) == (77, 88)

    made = results("fox")
    records = await store.finish_job(job.id, made, grid_png=png("grid"))
    assert [r.index for r in records] == [0, 1, 2, 3]
    assert [r.seed for r in records] == [1, 2, 3, 4]
    assert [r.finish_reason for r in records] == ["ok", "ok", "ok", "filtered"]
    assert records[1].parameters == "fox\nSteps: 2, Seed: 2"
    for record, result in zip(records, made, strict=True):
        assert await store.read_png(record) == result.png
        assert await store.read_latents(record) == result.latents
    assert await store.read_grid(job.id) == png("grid")

    done = await store.get_job(job.id)
    assert done.status == "done" and done.finished_at >= done.started_at >= done.created_at
    assert await store.job_images(job.id) == records
    assert await store.image_for(job.id, 2) == records[2]
    assert await store.image_for(job.id, 9) is None
    assert await store.get_image(records[0].id) == records[0]
    assert await store.get_image(10_000) is None
    assert await store.unfinished_jobs() == []


async def test_results_without_latents_or_grid(store):
    job = await store.create_job(ALICE, request())
    (record,) = await store.finish_job(job.id, results("plain", seeds=(9,), latents=False))
    assert record.latents_path is None
    assert await store.read_latents(record) is None
    assert await store.read_grid(job.id) is None


async def test_a_failing_insert_leaves_no_half_written_rows(store):
    job = await store.create_job(ALICE, request())
    await store.mark_running(job.id)
    clash = results("a", seeds=(1, 2)) + results("b", seeds=(3,))  # two images with index 0
    with pytest.raises(sqlite3.IntegrityError):
        await store.finish_job(job.id, clash, grid_png=png("grid"))
    assert await store.job_images(job.id) == []
    still = await store.get_job(job.id)
    assert still.status == "running"
    assert await store.read_grid(job.id) is None
    # The job can still finish properly afterwards.
    assert len(await store.finish_job(job.id, results("ok"))) == 4


async def test_finished_jobs_do_not_change_state(store):
    job = await store.create_job(ALICE, request())
    await store.finish_job(job.id, results("x"))
    with pytest.raises(JobStateError, match="done"):
        await store.finish_job(job.id, results("y"))
    with pytest.raises(JobStateError, match="cannot start"):
        await store.mark_running(job.id)
    assert await store.cancel_job(job.id) is False
    assert await store.fail_job(job.id, "late error") is False
    after = await store.get_job(job.id)
    assert after.status == "done" and after.error is None
    assert len(await store.job_images(job.id)) == 4


async def test_results_of_a_cancelled_job_are_refused(store):
    job = await store.create_job(ALICE, request())
    await store.mark_running(job.id)
    assert await store.cancel_job(job.id) is True
    with pytest.raises(JobStateError, match="cancelled"):
        await store.finish_job(job.id, results("late"))
    assert await store.job_images(job.id) == []
    cancelled = await store.get_job(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None


async def test_fail_keeps_the_message(store):
    job = await store.create_job(ALICE, request())
    assert await store.fail_job(job.id, "The engine is unavailable.") is True
    failed = await store.get_job(job.id)
    assert (failed.status, failed.error) == ("failed", "The engine is unavailable.")


async def test_unknown_jobs_are_reported(store):
    with pytest.raises(JobNotFound, match="#404"):
        await store.set_message(404, 1, 2)
    with pytest.raises(JobNotFound):
        await store.mark_running(404)
    with pytest.raises(JobNotFound):
        await store.fail_job(404, "x")
    with pytest.raises(JobNotFound):
        await store.finish_job(404, results("x"))


async def test_unfinished_jobs_are_the_queued_and_running_oldest_first(store):
    jobs = [await store.create_job(user, request(f"job {n}")) for n, user in enumerate([ALICE, BOB] * 3)]
    await store.mark_running(jobs[1].id)
    await store.finish_job(jobs[2].id, results("d"))
    await store.fail_job(jobs[3].id, "boom")
    await store.cancel_job(jobs[4].id)
    unfinished = await store.unfinished_jobs()
    assert [(j.id, j.status) for j in unfinished] == [
        (jobs[0].id, "queued"),
        (jobs[1].id, "running"),
        (jobs[5].id, "queued"),
    ]


async def test_a_running_job_can_be_marked_running_again_after_a_restart(store):
    job = await store.create_job(ALICE, request())
    await store.mark_running(job.id)
    first = (await store.get_job(job.id)).started_at
    await store.mark_running(job.id)
    assert (await store.get_job(job.id)).started_at >= first


async def test_state_survives_reopening(tmp_path):
    db = tmp_path / "imagine.sqlite3"
    store = await Storage.open(db)
    job = await store.create_job(ALICE, request(init_image=png("i")))
    records = await store.finish_job(job.id, results("r"), grid_png=png("g"))
    await store.toggle_favorite(ALICE, records[0].id)
    await store.update_settings(ALICE, style="anime")
    await store.close()

    store = await Storage.open(db)
    try:
        assert (await store.get_job(job.id)).request.init_image == png("i")
        assert await store.job_images(job.id) == records
        assert await store.favorites(ALICE) == [records[0]]
        assert (await store.get_settings(ALICE)).style == "anime"
        assert await store.read_grid(job.id) == png("g")
    finally:
        await store.close()


# -- history -------------------------------------------------------------------------------------


async def test_history_is_newest_first_paged_and_counted(store):
    ids = [(await store.create_job(ALICE, request(f"cat number {n}"))).id for n in range(25)]
    await store.create_job(BOB, request("cat of bob"))
    page0, total = await store.history(ALICE)
    assert total == 25
    assert [j.id for j in page0] == ids[::-1][:10]
    page2, total = await store.history(ALICE, page=2)
    assert [j.id for j in page2] == ids[::-1][20:]
    assert (await store.history(ALICE, page=3)) == ([], 25)
    only, total = await store.history(ALICE, per_page=1)
    assert [j.id for j in only] == [ids[-1]] and total == 25
    with pytest.raises(ValueError):
        await store.history(ALICE, page=-1)
    with pytest.raises(ValueError):
        await store.history(ALICE, per_page=0)


async def test_history_search_ignores_case_and_takes_wildcards_literally(store):
    prompts = [
        "A Red FOX",
        "the red fox, again",
        "Fuchs im Schnee ÖL",
        "100% pure",
        "snake_case",
        "snakeXcase",
        "dog",
    ]
    ids = {p: (await store.create_job(ALICE, request(p))).id for p in prompts}
    await store.create_job(BOB, request("red fox of bob"))

    async def found(search):
        jobs, total = await store.history(ALICE, search=search)
        assert total == len(jobs)
        return {j.request.prompt for j in jobs}

    assert await found("red fox") == {"A Red FOX", "the red fox, again"}
    assert await found("öl") == {"Fuchs im Schnee ÖL"}
    assert await found("%") == {"100% pure"}
    assert await found("e_c") == {"snake_case"}
    assert await found("\\") == set()
    assert await found("  ") == set(prompts)
    assert await found("zebra") == set()
    assert ids  # every prompt was stored


# -- favourites ----------------------------------------------------------------------------------


async def test_favorites_toggle_and_list_newest_first(store):
    job = await store.create_job(ALICE, request())
    records = await store.finish_job(job.id, results("f"))
    assert await store.toggle_favorite(BOB, records[2].id) is True
    assert await store.toggle_favorite(BOB, records[0].id) is True
    assert await store.favorites(BOB) == [records[0], records[2]]
    assert await store.favorites(ALICE) == []
    assert await store.toggle_favorite(BOB, records[2].id) is False
    assert await store.favorites(BOB) == [records[0]]
    with pytest.raises(ImageNotFound, match="#9999"):
        await store.toggle_favorite(BOB, 9999)
