"""/settings: per-user defaults that the next /imagine uses."""

from __future__ import annotations

import pytest

from cogs.utils.config import BotConfig
from tests.cogs.conftest import buttons_of

pytestmark = pytest.mark.simcord(settle_timeout=30)


@pytest.fixture
def bot_config(fake_config: BotConfig) -> BotConfig:
    return fake_config


async def _open(scene):
    result = await scene.alice.slash(scene.channel, "settings")
    assert result.ephemeral
    return result.response


async def test_settings_change_what_the_next_imagine_uses(scene, simcord_bot):
    panel = await _open(scene)
    await scene.alice.select(panel.message, ["16:9"], custom_id="imagine:set:ar")
    await scene.alice.select(panel.message, [".5"], custom_id="imagine:set:quality")
    await scene.alice.select(panel.message, ["anime"], custom_id="imagine:set:style")
    await scene.alice.select(panel.message, ["fake-wide"], custom_id="imagine:set:model")
    fields = {f.name: f.value for f in panel.embeds[0].fields}
    assert fields["Aspect ratio"] == "16:9" and fields["Quality"] == ".5" and fields["Style"] == "anime"

    result = await scene.alice.slash(scene.channel, "imagine", prompt="a harbour at night")

    assert result.response.content.startswith("**a harbour at night** --ar 16:9 --seed ")
    assert "--style anime" in result.response.content and "--model fake-wide" in result.response.content
    (job,), _ = await simcord_bot.storage.history(scene.alice.id)
    assert job.request.aspect_ratio == "16:9" and job.request.steps == 1  # quality .5 of 2 steps
    assert job.request.style == "anime" and job.request.model == "fake-wide"
    # Typed parameters win over the saved ones; other users are not affected.
    typed = await scene.alice.slash(scene.channel, "imagine", prompt="a harbour --ar 1:1 --style cinematic")
    assert "--ar" not in typed.response.content and "--style cinematic" in typed.response.content
    bobs = await scene.bob.slash(scene.channel, "imagine", prompt="a harbour")
    assert "--ar" not in bobs.response.content and "--style" not in bobs.response.content


async def test_negative_prompt_through_a_modal(scene, simcord_bot):
    panel = await _open(scene)
    shown = await scene.alice.click(panel.message, label="Negative prompt…")
    assert shown.modal is not None
    await scene.alice.submit_modal(shown, {"imagine:settings:negative": "  blurry,   text "})

    assert (await simcord_bot.storage.get_settings(scene.alice.id)).negative_prompt == "blurry, text"
    assert {f.name: f.value for f in panel.embeds[0].fields}["Negative prompt"] == "blurry, text"
    result = await scene.alice.slash(scene.channel, "imagine", prompt="a portrait --no hats")
    assert "--no blurry, text, hats" in result.response.content


async def test_toggles_private_results_and_reset(scene, simcord_bot):
    panel = await _open(scene)
    await scene.alice.click(panel.message, label="Private: off")
    assert "Private: on" in buttons_of(panel)
    private = await scene.alice.slash(scene.channel, "imagine", prompt="a secret")
    assert private.ephemeral and len(private.response.attachments) == 1

    await scene.alice.click(panel.message, label="Remix: off")
    assert (await simcord_bot.storage.get_settings(scene.alice.id)).remix
    await scene.alice.click(panel.message, label="Reset")
    settings = await simcord_bot.storage.get_settings(scene.alice.id)
    assert not settings.private and not settings.remix and settings.aspect_ratio is None
    public = await scene.alice.slash(scene.channel, "imagine", prompt="not a secret")
    assert not public.ephemeral


async def test_a_settings_message_keeps_working_after_a_restart(scene, simcord_bot, bot_config):
    from bot import create_bot

    panel = await _open(scene)
    fresh = create_bot(bot_config)
    await scene.env.restart_bot(fresh)
    await simcord_bot.release()
    try:
        await scene.alice.select(panel.message, ["2:3"], custom_id="imagine:set:ar")
        assert (await fresh.storage.get_settings(scene.alice.id)).aspect_ratio == "2:3"
    finally:
        await fresh.release()


async def test_works_in_direct_messages(simcord_env, simcord_bot):
    carol = simcord_env.create_user("carol")

    result = await carol.slash("imagine", prompt="a lantern --seed 3")

    assert result.response.content.startswith("**a lantern** --seed 3")
    assert len(result.response.attachments) == 1
    single = await carol.click(result.response.message, label="U1")
    assert "Image #1" in single.response.content
    (job, _), _ = await simcord_bot.storage.history(carol.id)
    assert job.guild_id is None and job.channel_id == carol.dm_channel.id
