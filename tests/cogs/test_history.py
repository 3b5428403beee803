"""/history, /show and /info."""

from __future__ import annotations

import pytest

from cogs.utils.config import BotConfig
from tests.cogs.conftest import buttons_of

pytestmark = pytest.mark.simcord(settle_timeout=30)


@pytest.fixture
def bot_config(fake_config: BotConfig) -> BotConfig:
    return fake_config


async def test_history_lists_jobs_with_links_searches_and_pages(scene, simcord_bot):
    messages = {}
    for number in range(12):
        animal = "fox" if number % 3 == 0 else "owl"
        result = await scene.alice.slash(scene.channel, "imagine", prompt=f"{animal} number {number} --seed {100 + number}")
        messages[number] = result.response
    await scene.bob.slash(scene.channel, "imagine", prompt="bob's fox")

    first = await scene.alice.slash(scene.channel, "history")

    assert first.ephemeral
    (embed,) = first.response.embeds
    assert "owl number 11 --seed 111" in embed.description and "bob" not in embed.description
    link = f"https://discord.com/channels/{scene.guild.id}/{scene.channel.id}/{messages[11].id}"
    assert f"[jump]({link})" in embed.description
    assert embed.footer.text.startswith("Page 1 of 2 · 12 jobs")
    assert "number 1 " not in embed.description  # the oldest two are on page 2

    older = await scene.alice.click(first.response.message, label="Older ▶")
    (page2,) = older.response.embeds
    assert "owl number 1 --seed 101" in page2.description and "number 11" not in page2.description
    assert page2.footer.text.startswith("Page 2 of 2")

    foxes = await scene.alice.slash(scene.channel, "history", search="FOX")
    (found,) = foxes.response.embeds
    assert found.footer.text.startswith("Page 1 of 1 · 4 jobs")
    assert all(f"fox number {n}" in found.description for n in (0, 3, 6, 9))

    page = await scene.alice.slash(scene.channel, "history", page=2)
    assert page.response.embeds[0].footer.text.startswith("Page 2 of 2")


async def test_show_posts_a_job_again_with_working_buttons(scene, simcord_bot):
    original = (await scene.alice.slash(scene.channel, "imagine", prompt="a castle --seed 5")).response
    (job,), _ = await simcord_bot.storage.history(scene.alice.id)

    shown = await scene.bob.slash(scene.channel, "show", job=job.id)

    posted = shown.response
    assert posted.id != original.id and posted.content == original.content
    assert len(posted.attachments) == 1 and len(buttons_of(posted)) == 9
    again = await scene.bob.click(posted.message, label="U2")
    assert "Image #2" in again.response.content


async def test_show_refuses_unknown_and_private_jobs(scene, simcord_bot):
    missing = await scene.alice.slash(scene.channel, "show", job=999)
    assert missing.ephemeral and "There is no job #999" in missing.response.content

    await simcord_bot.storage.update_settings(scene.alice.id, private=True)
    await scene.alice.slash(scene.channel, "imagine", prompt="my secret garden")
    (job,), _ = await simcord_bot.storage.history(scene.alice.id)
    refused = await scene.bob.slash(scene.channel, "show", job=job.id)
    assert refused.ephemeral and "private" in refused.response.content
    own = await scene.alice.slash(scene.channel, "show", job=job.id)
    assert len(own.response.attachments) == 1
    # Made in private, it stays private when its owner stops keeping new results private.
    await simcord_bot.storage.update_settings(scene.alice.id, private=False)
    still = await scene.bob.slash(scene.channel, "show", job=job.id)
    assert still.ephemeral and "private" in still.response.content


async def test_show_of_a_failed_job_says_why_and_offers_a_retry(scene, simcord_bot):
    storage = simcord_bot.storage
    job = await storage.create_job(scene.alice.id, (await _request(simcord_bot, "a broken dream")))
    await storage.fail_job(job.id, "The model server is not answering.")

    shown = await scene.alice.slash(scene.channel, "show", job=job.id)

    assert shown.ephemeral and "is failed: The model server is not answering." in shown.response.content
    assert list(buttons_of(shown.response)) == ["🔄"]


async def _request(bot, prompt):
    from engine.params import parse_prompt

    return parse_prompt(prompt, bot.engine.profile)


async def test_info_shows_your_jobs_the_queue_and_the_engine(scene, simcord_bot, fake_engine):
    fake_engine.close_gate(scene.env)
    await scene.alice.slash(scene.channel, "imagine", prompt="first")
    await scene.alice.slash(scene.channel, "imagine", prompt="second")
    await scene.bob.slash(scene.channel, "imagine", prompt="bob's")

    info = await scene.alice.slash(scene.channel, "info")

    assert info.ephemeral
    fields = {field.name: field.value for field in info.response.embeds[0].fields}
    assert "running: first" in fields["Your jobs"]
    assert "number 2 in the queue: second" in fields["Your jobs"]
    assert "bob" not in fields["Your jobs"]
    assert fields["Queue"].startswith("1 running, 2 waiting.")
    assert "1 running and 10 waiting per person" in fields["Queue"]
    assert "FakeEngine" in fields["Engine"] and fields["Models"] == "fake, fake-wide"
    fake_engine.gate.set()
    await scene.env.settle()
