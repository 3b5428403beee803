"""The real bot over the real discord.py transport, against the fake Discord on loopback.

simcord tests the bot's behaviour but not discord.py's HTTP and gateway layers; this goes through
them: login, command sync over REST, INTERACTION_CREATE over the (zlib-stream) gateway, the
deferred callback, the multipart upload of the grid into the original response, a persistent
button click whose result arrives the same way, and 429s with `retry_after` that discord.py must
wait out and retry (re-sending the whole upload) without the bot noticing.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import discord
import pytest
from PIL import Image

from bot import ImagineBot, create_bot
from cogs.utils.config import BotConfig
from engine.base import Engine
from tests.e2e.fake_discord import FakeDiscord, RecordedRequest, point_discord_at, running

pytestmark = pytest.mark.slow

CALLBACK = r"/interactions/\d+/[^/]+/callback"
ORIGINAL = r"/webhooks/\d+/[^/]+/messages/@original"
WEBHOOK_MESSAGE = r"/webhooks/\d+/[^/]+/messages/(@original|\d+)"
#: Discord's privileged intents: GUILD_MEMBERS, GUILD_PRESENCES, MESSAGE_CONTENT.
PRIVILEGED_INTENTS = (1 << 1) | (1 << 8) | (1 << 15)
#: The tiny model draws 64x64, so a 2x2 grid is 128x128.
TILE = 64


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as server:
        with point_discord_at(server):
            yield server


@pytest.fixture
async def live_bot(fake: FakeDiscord, tmp_path: Path, tiny_engine: Engine) -> AsyncIterator[ImagineBot]:
    config = BotConfig(
        token=fake.token,
        db_path=tmp_path / "imagine.db",
        engine=tiny_engine,
        dev_guild=fake.guild_id,
        progress_interval=0.0,
        # The fake has one server: waiting the default 2 s for more GUILD_CREATEs only slows the test.
        guild_ready_timeout=0.05,
    )
    async with running(create_bot(config), fake.token, within=20) as client:
        yield client


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """The bot's and discord.py's log: a failed upload is logged, not raised, so tests read it."""
    caplog.set_level(logging.WARNING)
    return caplog


def errors_in(records: list[logging.LogRecord]) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in records if r.levelno >= logging.ERROR]


def png_upload(request: RecordedRequest) -> Image.Image | None:
    """The request's first upload as an image when it is a PNG (progress previews are JPEGs)."""
    if not request.files or not request.files[0].filename.endswith(".png"):
        return None
    image = Image.open(io.BytesIO(request.files[0].data))
    image.load()
    assert image.format == "PNG"
    return image


def buttons(payload: dict[str, Any]) -> dict[str, str]:
    """{label or emoji: custom_id} of a message payload's buttons, in order."""
    found = {}
    for row in payload["components"]:
        for component in row["components"]:
            name = component.get("label") or component["emoji"]["name"]
            found[name] = component["custom_id"]
    return found


async def test_login_and_command_sync(fake: FakeDiscord, live_bot: ImagineBot) -> None:
    assert [(r.method, r.path) for r in fake.requests[:2]] == [
        ("GET", "/users/@me"),
        ("GET", "/oauth2/applications/@me"),
    ]
    assert live_bot.user is not None and live_bot.user.id == fake.bot_id
    assert [g.id for g in live_bot.guilds] == [fake.guild_id]

    (sync,) = fake.find("PUT", rf"/applications/{fake.application_id}/guilds/{fake.guild_id}/commands")
    assert sync.status == 200
    commands = {c["name"]: c for c in sync.json}
    assert {"imagine", "history", "show", "settings", "info"} <= set(commands)
    options = {o["name"]: (o["type"], o.get("required", False)) for o in commands["imagine"]["options"]}
    assert options == {"prompt": (3, True), "image": (11, False)}
    assert all(len(c["description"]) <= 100 for c in sync.json)

    identify = next(m["d"] for m in fake.gateway_received if m["op"] == 2)
    assert identify["intents"] & PRIVILEGED_INTENTS == 0
    assert fake.token not in str(live_bot.config)


async def test_imagine_then_u1_over_the_wire_riding_out_429s(
    fake: FakeDiscord, live_bot: ImagineBot, logs: pytest.LogCaptureFixture
) -> None:
    # The grid's upload is answered 429 once: discord.py must wait and send the whole multipart again.
    grid_limit = fake.rate_limit("PATCH", ORIGINAL, retry_after=0.3, when=lambda r: png_upload(r) is not None)

    command = await fake.send_command("imagine", {"prompt": "a red fox in the snow --seed 7 --steps 1"})

    deferred = await fake.wait_for("POST", CALLBACK, status=200, within=5)
    assert deferred.path == f"/interactions/{command.id}/{command.token}/callback"
    assert deferred.query == {"with_response": "1"} and deferred.json["type"] == 5

    final = await fake.wait_for(
        "PATCH", ORIGINAL, status=200, predicate=lambda r: png_upload(r) is not None, within=20
    )
    assert command.token in final.path
    (limited,) = grid_limit.hits
    assert limited.status == 429 and final.at - limited.at >= 0.3
    assert final.files[0].data == limited.files[0].data
    assert final.multipart and [f.field for f in final.files] == ["files[0]"]
    grid = png_upload(final)
    assert grid is not None and grid.size == (2 * TILE, 2 * TILE)
    payload = final.json
    assert payload["attachments"] == [{"id": 0, "filename": final.files[0].filename}]
    assert payload["content"].startswith("**a red fox in the snow** --seed 7")
    assert payload["content"].endswith(f"<@{fake.user_id}>")
    grid_buttons = buttons(payload)
    assert list(grid_buttons) == ["U1", "U2", "U3", "U4", "🔄", "V1", "V2", "V3", "V4"]
    assert all(1 <= len(custom_id) <= 100 for custom_id in grid_buttons.values())
    assert len(set(grid_buttons.values())) == 9

    # What Discord would now show: the deferred message, edited into the grid.
    message = fake.original_message(command)
    assert message is not None and message["attachments"][0]["content_type"] == "image/png"
    jobs, total = await live_bot.storage.history(fake.user_id)
    assert total == 1 and jobs[0].status == "done" and jobs[0].message_id == int(message["id"])
    assert re.fullmatch(rf"imagine:u:{jobs[0].id}:0", grid_buttons["U1"])

    # U1, with its acknowledgement rate limited this time: 0.3 s is well inside Discord's 3 s.
    since = len(fake.requests)
    click_limit = fake.rate_limit("POST", CALLBACK, retry_after=0.3)
    click = await fake.click(grid_buttons["U1"], int(message["id"]), user_id=fake.user_id + 1)

    acknowledged = await fake.wait_for("POST", CALLBACK, status=200, since=since, within=5)
    assert len(click_limit.hits) == 1 and acknowledged.at - click_limit.hits[0].at >= 0.3
    assert click.token in acknowledged.path and acknowledged.json["type"] == 5
    single_post = await fake.wait_for(
        "PATCH", ORIGINAL, status=200, since=since, predicate=lambda r: png_upload(r) is not None, within=20
    )
    assert click.token in single_post.path
    single = png_upload(single_post)
    assert single is not None and single.size == (TILE, TILE)
    assert f"Image #1 <@{fake.user_id + 1}>" in single_post.json["content"]
    assert list(buttons(single_post.json)) == [
        "Vary (Subtle)",
        "Vary (Strong)",
        "Favorite",
        "Upscale (Subtle)",
        "Upscale (Creative)",
    ]
    single_message = fake.original_message(click)
    assert single_message is not None and single_message["id"] != message["id"]
    assert fake.messages[int(message["id"])]["attachments"] == message["attachments"]  # the grid is untouched

    unexpected = [r for r in fake.requests if r.status >= 400 and r.status != 429]
    assert unexpected == [], fake.describe()
    assert errors_in(logs.records) == []
    rode_out = [r for r in logs.records if r.name.startswith("discord.") and "rate limited" in r.getMessage()]
    assert len(rode_out) == 2  # discord.py saw both 429s as rate limits, not as bans


async def test_an_image_prompt_is_downloaded_from_discord(fake: FakeDiscord, live_bot: ImagineBot) -> None:
    start = io.BytesIO()
    Image.new("RGB", (TILE, TILE), (20, 90, 200)).save(start, "PNG")
    attachment = fake.add_attachment(start.getvalue(), "start.png")

    command = await fake.send_command("imagine", {"prompt": "a blue fox --steps 1", "image": attachment})

    # The job's message may be the deferred response or a followup of it: either is edited into the grid.
    final = await fake.wait_for(
        "PATCH", WEBHOOK_MESSAGE, status=200, predicate=lambda r: png_upload(r) is not None, within=20
    )
    assert command.token in final.path
    assert final.json["content"].startswith("**a blue fox**")
    assert fake.downloads == [int(attachment["id"])]
    grid = png_upload(final)
    assert grid is not None and grid.size == (2 * TILE, 2 * TILE)
    (job,), _ = await live_bot.storage.history(fake.user_id)
    assert job.request.init_image is not None


async def test_a_file_that_is_no_image_gets_a_private_error(fake: FakeDiscord, live_bot: ImagineBot) -> None:
    notes = fake.add_attachment(b"just some words", "notes.txt", "text/plain")

    await fake.send_command("imagine", {"prompt": "a fox", "image": notes})

    answer = await fake.wait_for("POST", CALLBACK, status=200, within=5)
    assert answer.json["type"] == 4 and answer.json["data"]["flags"] & 64  # a message only the user sees
    assert "not an image" in answer.json["data"]["content"]
    assert fake.downloads == []  # refused from its metadata, before downloading a byte
    assert (await live_bot.storage.history(fake.user_id))[1] == 0


async def test_a_click_after_close_and_restart_still_works(
    fake: FakeDiscord, tmp_path: Path, tiny_engine: Engine
) -> None:
    """The persistent buttons survive a real disconnect and a new process-like bot on the same database."""
    config = BotConfig(
        token=fake.token,
        db_path=tmp_path / "imagine.db",
        engine=tiny_engine,
        dev_guild=fake.guild_id,
        guild_ready_timeout=0.05,
    )
    first = create_bot(config)
    async with running(first, fake.token, within=20):
        command = await fake.send_command("imagine", {"prompt": "a lighthouse --seed 3 --steps 1"})
        final = await fake.wait_for(
            "PATCH", ORIGINAL, status=200, predicate=lambda r: png_upload(r) is not None, within=20
        )
    reroll = buttons(final.json)["🔄"]
    message = fake.original_message(command)
    assert message is not None

    second = create_bot(config)
    async with running(second, fake.token, within=20):
        since = len(fake.requests)
        click = await fake.click(reroll, int(message["id"]))
        again = await fake.wait_for(
            "PATCH",
            ORIGINAL,
            status=200,
            since=since,
            predicate=lambda r: png_upload(r) is not None,
            within=20,
        )
    assert click.token in again.path
    assert "Rerolled by" in again.json["content"] and not re.search(r"--seed 3\b", again.json["content"])
    assert len(fake.gateway_compression) == 2  # two real gateway sessions
    assert isinstance(first, discord.Client) and first.is_closed() and second.is_closed()
