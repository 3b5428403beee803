"""What users see when their input is wrong: a short private message, and nothing stored."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from cogs.utils.config import BotConfig
from tests.cogs.conftest import callbacks, png

pytestmark = pytest.mark.simcord(settle_timeout=30)


@pytest.fixture
def bot_config(fake_config: BotConfig) -> BotConfig:
    fake_config.max_input_bytes = 200_000
    return fake_config


async def _stored(bot, user) -> int:
    return (await bot.storage.history(user.id))[1]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a fox --ar 0:1", "--ar needs W:H"),
        ("a fox --seed banana", "--seed needs a whole number"),
        ("a fox --wings 3", "Unknown parameter --wings"),
        ("--ar 3:2", "The prompt is empty"),
        ("a fox --model nonexistent", "Unknown model"),
    ],
)
async def test_a_bad_parameter_gets_a_private_error_and_stores_nothing(scene, simcord_bot, prompt, expected):
    result = await scene.alice.slash(scene.channel, "imagine", prompt=prompt)

    assert result.ephemeral
    assert result.response.content.startswith("❌") and expected in result.response.content
    assert "Traceback" not in result.response.content
    assert callbacks(scene.env) == [4]  # answered at once, nothing public was shown
    assert await _stored(simcord_bot, scene.alice) == 0
    assert scene.channel.history() == []


async def test_an_attachment_that_is_not_an_image_is_refused(scene, simcord_bot):
    result = await scene.alice.slash(scene.channel, "imagine", prompt="a fox", image=("notes.txt", b"hello"))

    assert result.ephemeral and "`notes.txt` is text/plain, not an image" in result.response.content
    assert await _stored(simcord_bot, scene.alice) == 0


async def test_an_attachment_that_is_too_large_is_refused(scene, simcord_bot):
    big = png(600, 600, (1, 2, 3)) + bytes(250_000)  # a valid PNG header and too many bytes
    result = await scene.alice.slash(scene.channel, "imagine", prompt="a fox", image=("big.png", big))

    assert result.ephemeral and "KiB; image prompts can be at most 195 KiB" in result.response.content
    assert await _stored(simcord_bot, scene.alice) == 0


async def test_a_decompression_bomb_is_refused_after_a_private_answer(scene, simcord_bot):
    buffer = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(buffer, format="PNG")  # 400 megapixels in a few kilobytes
    result = await scene.alice.slash(scene.channel, "imagine", prompt="a fox", image=("bomb.png", buffer.getvalue()))

    # The size is only known after the download, so the bot had deferred, privately.
    assert result.ephemeral and "far too many pixels" in result.response.content
    assert await _stored(simcord_bot, scene.alice) == 0
    assert scene.channel.history() == []


async def test_an_image_over_the_pixel_limit_is_refused_with_its_size(scene, simcord_bot):
    buffer = io.BytesIO()
    Image.new("1", (5000, 4000)).save(buffer, format="PNG")  # 20 megapixels, over the 16.7 allowed
    result = await scene.alice.slash(scene.channel, "imagine", prompt="a fox", image=("wide.png", buffer.getvalue()))

    assert result.ephemeral and "5000x4000 pixels" in result.response.content
    assert await _stored(simcord_bot, scene.alice) == 0


async def test_a_corrupt_image_is_refused(scene, simcord_bot):
    broken = png()[:60]
    result = await scene.alice.slash(scene.channel, "imagine", prompt="a fox", image=("broken.png", broken))

    assert result.ephemeral and "could not be read as an image" in result.response.content
    assert await _stored(simcord_bot, scene.alice) == 0


async def test_an_image_prompt_becomes_the_init_image(scene, simcord_bot, fake_engine):
    buffer = io.BytesIO()
    Image.new("RGB", (100, 80), (10, 200, 30)).save(buffer, format="JPEG")
    result = await scene.alice.slash(scene.channel, "imagine", prompt="a green field", image=("field.jpg", buffer.getvalue()))

    assert result.ephemeral and "Using `field.jpg` as the image prompt" in result.response.content
    (posted,) = result.followups
    assert not posted.ephemeral and len(posted.attachments) == 1 and "a green field" in posted.content
    (job,), _ = await simcord_bot.storage.history(scene.alice.id)
    assert job.status == "done" and job.request.init_image is not None and job.message_id == posted.id
    init = Image.open(io.BytesIO(job.request.init_image))
    assert init.format == "PNG" and init.size == (100, 80)


async def test_buttons_on_a_missing_job_answer_clearly(scene, simcord_bot):
    grid = (await scene.alice.slash(scene.channel, "imagine", prompt="a fox")).response
    await simcord_bot.storage._conn.execute("DELETE FROM images")  # the images vanished
    result = await scene.bob.click(grid.message, label="U1")

    assert result.ephemeral and "has no image 1" in result.response.content
    assert await _stored(simcord_bot, scene.bob) == 0


async def test_upscale_beyond_the_size_limit_is_refused(scene, simcord_bot):
    grid = (await scene.alice.slash(scene.channel, "imagine", prompt="a fox")).response
    single = (await scene.alice.click(grid.message, label="U1")).response
    image = (await simcord_bot.storage.history(scene.alice.id))[0][0]
    (record,) = await simcord_bot.storage.job_images(image.id)
    await simcord_bot.storage._conn.execute("UPDATE images SET width = 1536, height = 1536 WHERE id = ?", (record.id,))

    result = await scene.alice.click(single.message, label="Upscale (Subtle)")

    assert result.ephemeral and "1536x1536" in result.response.content and "3072x3072" in result.response.content
    assert await _stored(simcord_bot, scene.alice) == 2
