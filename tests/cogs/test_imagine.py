"""/imagine and the buttons under its results, on the tiny model in simcord."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from engine.types import ImageResult
from tests.cogs.conftest import FAST, attachment_image, buttons_of, callbacks, rows_of

pytestmark = pytest.mark.simcord(settle_timeout=60)


async def test_imagine_posts_a_grid_with_nine_buttons(scene, simcord_bot):
    result = await scene.alice.slash(scene.channel, "imagine", prompt=f"a red fox in the snow --seed 7 --ar 3:2 {FAST}")

    assert callbacks(scene.env) == [5]  # acknowledged at once with "thinking…"
    message = result.response
    assert message.content.startswith("**a red fox in the snow** --ar 3:2 --seed 7")
    assert message.content.endswith(f"- {scene.alice.mention}")
    assert len(message.attachments) == 1
    grid = attachment_image(scene.env, message)
    assert grid.format == "PNG" and grid.size == (128, 128)
    assert rows_of(message) == [["U1", "U2", "U3", "U4", "🔄"], ["V1", "V2", "V3", "V4"]]
    jobs, total = await simcord_bot.storage.history(scene.alice.id)
    assert total == 1 and jobs[0].status == "done"
    assert jobs[0].message_id == message.id


async def _grid(scene, prompt: str = f"a red fox --seed 7 {FAST}"):
    result = await scene.alice.slash(scene.channel, "imagine", prompt=prompt)
    return result.response


async def test_u2_posts_that_image_alone_with_five_buttons_for_whoever_pressed(scene, simcord_bot, tiny_engine):
    grid = await _grid(scene)
    storage = simcord_bot.storage
    (first_job,), _ = await storage.history(scene.alice.id)

    result = await scene.bob.click(grid.message, label="U2")

    single = result.response
    assert callbacks(scene.env)[-1] == 5
    assert single.id != grid.id
    assert single.content.startswith("**a red fox** --seed 8")  # the second image has the second seed
    assert f"Image #2 {scene.bob.mention}" in single.content
    image = attachment_image(scene.env, single)
    assert image.size == (64, 64)
    second = await storage.image_for(first_job.id, 1)
    # Full quality: the stored latents decoded again with the full VAE (grids may use a fast decoder).
    latents = await storage.read_latents(second)
    assert latents is not None
    full = await tiny_engine.decode_full(
        first_job.request,
        ImageResult(png=await storage.read_png(second), seed=second.seed, index=0, width=64, height=64, latents=latents),
    )
    assert image.convert("RGB").tobytes() == Image.open(io.BytesIO(full)).convert("RGB").tobytes()
    assert list(buttons_of(single)) == ["Vary (Subtle)", "Vary (Strong)", "Favorite", "Upscale (Subtle)", "Upscale (Creative)"]
    (bobs_job,), total = await storage.history(scene.bob.id)
    assert total == 1 and bobs_job.kind == "single" and bobs_job.parent_image_id == second.id
    assert (await storage.history(scene.alice.id))[1] == 1  # alice's history is untouched


async def test_v3_makes_four_variations_of_the_third_image(scene, simcord_bot):
    grid = await _grid(scene)
    storage = simcord_bot.storage
    (first_job,), _ = await storage.history(scene.alice.id)

    result = await scene.alice.click(grid.message, label="V3")

    variations = result.response
    assert f"Variations (Strong) by {scene.alice.mention}" in variations.content
    assert attachment_image(scene.env, variations).size == (128, 128)
    assert len(buttons_of(variations)) == 9
    newest = (await storage.history(scene.alice.id))[0][0]
    third = await storage.image_for(first_job.id, 2)
    assert newest.kind == "variation" and newest.parent_image_id == third.id
    assert newest.request.init_image == await storage.read_png(third)
    assert newest.request.strength == 0.7
    assert newest.request.prompt == "a red fox" and newest.request.seeds != first_job.request.seeds


async def test_reroll_runs_the_same_prompt_with_new_seeds(scene, simcord_bot):
    grid = await _grid(scene, f"a lighthouse at dusk --ar 2:3 --seed 99 {FAST}")

    result = await scene.bob.click(grid.message, custom_id=buttons_of(grid)["🔄"])

    again = result.response
    assert again.content.startswith("**a lighthouse at dusk** --ar 2:3 --seed ")
    assert "--seed 99" not in again.content and f"Rerolled by {scene.bob.mention}" in again.content
    assert len(again.attachments) == 1
    (job,), _ = await simcord_bot.storage.history(scene.bob.id)
    assert job.kind == "reroll" and job.request.aspect_ratio == "2:3" and job.request.steps == 1


async def test_vary_and_upscale_from_a_single_image(scene, simcord_bot):
    grid = await _grid(scene)
    single = (await scene.alice.click(grid.message, label="U1")).response
    storage = simcord_bot.storage

    subtle = (await scene.alice.click(single.message, label="Vary (Subtle)")).response
    assert "Variations (Subtle) by" in subtle.content and len(buttons_of(subtle)) == 9
    vary_job = (await storage.history(scene.alice.id))[0][0]
    assert vary_job.kind == "vary" and vary_job.request.strength == 0.35

    upscaled = (await scene.alice.click(single.message, label="Upscale (Creative)")).response
    assert "Upscaled (Creative) by" in upscaled.content
    assert attachment_image(scene.env, upscaled).size == (128, 128)
    assert list(buttons_of(upscaled))[0] == "Vary (Subtle)"
    up_job = (await storage.history(scene.alice.id))[0][0]
    assert up_job.kind == "upscale" and up_job.request.strength == 0.5
    assert (up_job.request.width, up_job.request.height) == (128, 128)


async def test_favorite_toggles(scene, simcord_bot):
    grid = await _grid(scene)
    single = (await scene.alice.click(grid.message, label="U4")).response

    added = await scene.bob.click(single.message, label="Favorite")
    assert added.ephemeral and "Added" in added.response.content
    (favorite,) = await simcord_bot.storage.favorites(scene.bob.id)
    removed = await scene.bob.click(single.message, label="Favorite")
    assert "Removed" in removed.response.content
    assert await simcord_bot.storage.favorites(scene.bob.id) == []
    assert favorite.job_id == (await simcord_bot.storage.history(scene.alice.id))[0][0].id


async def test_remix_opens_a_modal_and_uses_the_edited_prompt(scene, simcord_bot):
    grid = await _grid(scene, f"a red fox --seed 7 {FAST}")
    await simcord_bot.storage.update_settings(scene.bob.id, remix=True)

    shown = await scene.bob.click(grid.message, label="V1")

    assert shown.modal is not None
    field = shown.modal["components"][0]["components"][0]
    assert field["value"] == f"a red fox {FAST}"  # the seed is left out so new ones are drawn
    submitted = await scene.bob.submit_modal(shown, {"imagine:remix:prompt": f"a blue fox --ar 3:2 {FAST}"})
    assert submitted.response.content.startswith("**a blue fox** --ar 3:2")
    (job,), _ = await simcord_bot.storage.history(scene.bob.id)
    assert job.kind == "variation" and job.request.prompt == "a blue fox" and job.request.init_image is not None


async def test_remix_with_a_bad_parameter_is_refused_privately(scene, simcord_bot):
    grid = await _grid(scene)
    await simcord_bot.storage.update_settings(scene.bob.id, remix=True)
    shown = await scene.bob.click(grid.message, label="V2")

    submitted = await scene.bob.submit_modal(shown, {"imagine:remix:prompt": "a blue fox --ar banana"})

    assert submitted.ephemeral and "--ar" in submitted.response.content
    assert (await simcord_bot.storage.history(scene.bob.id))[1] == 0


def _progress_edits(env) -> list[dict]:
    edits = [e.json for e in env.http_requests if e.method == "PATCH" and e.json]
    return [edit for edit in edits if "%)" in (edit.get("content") or "")]


async def test_progress_is_shown_with_a_live_preview(scene, simcord_bot):
    await scene.alice.slash(scene.channel, "imagine", prompt="a fox --steps 3")

    edits = _progress_edits(scene.env)
    assert [e["content"].rsplit(" ", 1)[-1] for e in edits] == ["(0%)", "(33%)", "(66%)"]
    assert [a["filename"] for a in edits[1]["attachments"]] == ["preview.jpg"]


async def test_progress_edits_respect_the_interval(scene, simcord_bot):
    simcord_bot.config.progress_interval = 3600

    await scene.alice.slash(scene.channel, "imagine", prompt="a fox --steps 3")

    assert [e["content"].rsplit(" ", 1)[-1] for e in _progress_edits(scene.env)] == ["(0%)", "(33%)"]
