"""The fake Discord against a bare discord.py bot: proof that the fake speaks the wire protocol.

If these fail, the bot's end-to-end test can't be trusted either way, so they use the smallest
bot that goes through every path the real one needs: login, command sync, a deferred slash
command whose original response is edited with a file and a button, a persistent button answered
with a followup file, and the 429s discord.py must ride out (or not, without `Via`).
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import discord
import pytest
from discord import app_commands, ui
from discord.ext import commands
from PIL import Image

from tests.e2e.fake_discord import FakeDiscord, point_discord_at, running

GUILD_ID = 900000000000000100
WEBHOOK = r"/webhooks/\d+/[^/]+"
CALLBACK = r"/interactions/\d+/[^/]+/callback"


def png(size: tuple[int, int], colour: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


class AgainButton(ui.DynamicItem[ui.Button], template=r"echo:again:(?P<n>[0-9]+)"):
    """A persistent button: the state it needs (n) is in its custom_id."""

    def __init__(self, n: int) -> None:
        super().__init__(ui.Button(label="Again", custom_id=f"echo:again:{n}"))
        self.n = n

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: ui.Item[Any], match: Any, /
    ) -> AgainButton:
        return cls(int(match["n"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        await interaction.followup.send(
            f"again {self.n}", file=discord.File(io.BytesIO(png((8, 8))), "again.png")
        )


class TinyBot(commands.Bot):
    """`/echo text` defers, then edits its answer to the text, a PNG and an Again button."""

    def __init__(self) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=discord.Intents.default(),
            guild_ready_timeout=0.05,
            chunk_guilds_at_startup=False,
        )
        self.errors: list[BaseException] = []

        @app_commands.command(description="Say it back")
        async def echo(interaction: discord.Interaction, text: str, times: int = 1) -> None:
            await interaction.response.defer(thinking=True)
            view = ui.View(timeout=None)
            view.add_item(AgainButton(times))
            await interaction.edit_original_response(
                content=text * times,
                attachments=[discord.File(io.BytesIO(png((4, 2))), "echo.png")],
                view=view,
            )

        self.tree.add_command(echo)

        @self.tree.error
        async def on_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
            self.errors.append(error)

    async def setup_hook(self) -> None:
        self.add_dynamic_items(AgainButton)
        guild = discord.Object(GUILD_ID)
        self.tree.copy_global_to(guild=guild)
        await self.tree.sync(guild=guild)
        await self.tree.sync()


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(guild_id=GUILD_ID) as server:
        with point_discord_at(server):
            yield server


@pytest.fixture
async def bot(fake: FakeDiscord) -> AsyncIterator[TinyBot]:
    async with running(TinyBot(), fake.token) as client:
        yield client


async def test_login_identify_and_sync(fake: FakeDiscord, bot: TinyBot) -> None:
    assert bot.user is not None and bot.user.id == fake.bot_id
    assert bot.application_id == fake.application_id
    assert [g.id for g in bot.guilds] == [GUILD_ID]
    assert bot.get_channel(fake.channel_id) is not None
    paths = [(r.method, r.path) for r in fake.requests]
    assert paths[:2] == [("GET", "/users/@me"), ("GET", "/oauth2/applications/@me")]
    guild_sync = fake.find(
        "PUT", rf"/applications/{fake.application_id}/guilds/{GUILD_ID}/commands", status=200
    )
    global_sync = fake.find("PUT", rf"/applications/{fake.application_id}/commands", status=200)
    assert len(guild_sync) == len(global_sync) == 1
    (echo,) = guild_sync[0].json
    assert echo["name"] == "echo"
    assert [(o["name"], o["type"], o.get("required", False)) for o in echo["options"]] == [
        ("text", 3, True),
        ("times", 4, False),
    ]
    assert all(r.headers["Authorization"] == f"Bot {fake.token}" for r in fake.requests)
    identify = next(m for m in fake.gateway_received if m["op"] == 2)
    assert identify["d"]["token"] == fake.token
    assert identify["d"]["intents"] == discord.Intents.default().value
    assert any(m["op"] == 1 for m in fake.gateway_received)  # a heartbeat, answered with op 11


async def test_wrong_token_is_a_login_failure(fake: FakeDiscord) -> None:
    client = TinyBot()
    with pytest.raises(discord.LoginFailure):
        async with asyncio.timeout(10):
            await client.login("not-the-token")
    await client.close()
    assert [r.status for r in fake.requests] == [401]


async def test_slash_command_defer_then_edit_with_file_and_button(fake: FakeDiscord, bot: TinyBot) -> None:
    interaction = await fake.send_command("echo", {"text": "hi", "times": 3})

    callback = await fake.wait_for("POST", CALLBACK, status=200)
    assert callback.query == {"with_response": "1"}
    assert callback.json["type"] == 5
    edit = await fake.wait_for("PATCH", WEBHOOK + "/messages/@original", status=200)
    assert edit.multipart
    assert edit.json["content"] == "hihihi"
    assert [f.field for f in edit.files] == ["files[0]"]
    assert Image.open(io.BytesIO(edit.files[0].data)).size == (4, 2)
    (row,) = edit.json["components"]
    assert [c["custom_id"] for c in row["components"]] == ["echo:again:3"]

    message = fake.original_message(interaction)
    assert message is not None and message["content"] == "hihihi"
    assert message["attachments"][0]["filename"] == "echo.png"
    assert message["flags"] & 128 == 0  # no longer "thinking"
    assert bot.errors == []


async def test_a_command_in_dms(fake: FakeDiscord, bot: TinyBot) -> None:
    interaction = await fake.send_command("echo", {"text": "psst"}, in_guild=False)

    edit = await fake.wait_for("PATCH", WEBHOOK + "/messages/@original", status=200)
    assert interaction.guild_id is None and "guild_id" not in interaction.payload
    assert edit.json["content"] == "psst"
    message = fake.original_message(interaction)
    assert message is not None and "guild_id" not in message
    assert bot.errors == []


async def test_button_click_sends_a_followup_with_a_file(fake: FakeDiscord, bot: TinyBot) -> None:
    command = await fake.send_command("echo", {"text": "x"})
    await fake.wait_for("PATCH", WEBHOOK + "/messages/@original", status=200)
    assert command.original_message_id is not None
    since = len(fake.requests)

    click = await fake.click("echo:again:1", command.original_message_id)

    callback = await fake.wait_for("POST", CALLBACK, status=200, since=since)
    assert callback.json["type"] == 6  # deferred update: nothing shown yet
    followup = await fake.wait_for("POST", WEBHOOK, status=200, since=since)
    assert followup.query.get("wait") in ("1", "true")
    assert followup.json["content"] == "again 1"
    assert Image.open(io.BytesIO(followup.files[0].data)).size == (8, 8)
    assert (
        click.original_message_id == command.original_message_id
    )  # a deferred update keeps the clicked message
    posted = fake.messages[int(followup.response["id"])]
    assert posted["content"] == "again 1" and posted["attachments"][0]["content_type"] == "image/png"
    assert posted["id"] != str(command.original_message_id)


async def test_a_rate_limited_edit_is_retried_after_retry_after(fake: FakeDiscord, bot: TinyBot) -> None:
    rule = fake.rate_limit("PATCH", WEBHOOK + "/messages/@original", retry_after=0.3)

    interaction = await fake.send_command("echo", {"text": "slow"})

    limited = await fake.wait_for("PATCH", WEBHOOK + "/messages/@original", status=429)
    retried = await fake.wait_for("PATCH", WEBHOOK + "/messages/@original", status=200)
    assert rule.hits == [limited]
    assert retried.at - limited.at >= 0.3
    assert retried.files[0].data == limited.files[0].data  # the upload was sent again in full
    assert fake.original_message(interaction)["content"] == "slow"  # type: ignore[index]


async def test_a_rate_limited_rest_call_is_retried(fake: FakeDiscord, bot: TinyBot) -> None:
    channel = bot.get_channel(fake.channel_id)
    assert isinstance(channel, discord.TextChannel)
    fake.rate_limit("POST", rf"/channels/{fake.channel_id}/messages", times=2, retry_after=0.2)

    started = time.monotonic()
    async with asyncio.timeout(10):
        message = await channel.send("hello", file=discord.File(io.BytesIO(png((2, 2))), "a.png"))

    assert time.monotonic() - started >= 0.4
    assert [r.status for r in fake.find("POST", rf"/channels/{fake.channel_id}/messages")] == [429, 429, 200]
    assert message.content == "hello" and message.attachments[0].filename == "a.png"
    assert await message.attachments[0].read() == png((2, 2))  # served back by the fake


async def test_a_429_without_via_is_taken_for_a_ban(fake: FakeDiscord, bot: TinyBot) -> None:
    channel = bot.get_channel(fake.channel_id)
    assert isinstance(channel, discord.TextChannel)
    fake.rate_limit("POST", rf"/channels/{fake.channel_id}/messages", retry_after=0.1, via=False)

    with pytest.raises(discord.HTTPException) as raised:
        async with asyncio.timeout(10):
            await channel.send("hello")
    assert raised.value.status == 429
    assert [r.status for r in fake.find("POST", rf"/channels/{fake.channel_id}/messages")] == [429]


async def test_an_interaction_is_answered_once_like_discord(fake: FakeDiscord, bot: TinyBot) -> None:
    interaction = await fake.send_command("echo", {"text": "once"})
    await fake.wait_for("PATCH", WEBHOOK + "/messages/@original", status=200)

    async with aiohttp.ClientSession() as session:
        again = f"{fake.api_base}/interactions/{interaction.id}/{interaction.token}/callback?with_response=1"
        async with session.post(again, json={"type": 5}) as response:
            assert (response.status, (await response.json())["code"]) == (400, 40060)
        unknown = f"{fake.api_base}/interactions/{interaction.id}/not-a-token/callback?with_response=1"
        async with session.post(unknown, json={"type": 5}) as response:
            assert (response.status, (await response.json())["code"]) == (404, 10062)


async def test_json_content_type_has_no_charset(fake: FakeDiscord) -> None:
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bot {fake.token}"}
        async with session.get(f"{fake.api_base}/users/@me", headers=headers) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "application/json"
            assert (await response.json())["id"] == str(fake.bot_id)
        async with session.get(f"{fake.api_base}/nowhere", headers=headers) as response:
            assert response.status == 404
            assert response.headers["Content-Type"] == "application/json"
    assert [str(r) for r in fake.requests] == ["GET /users/@me -> 200", "GET /nowhere -> 404"]


async def test_gateway_speaks_the_compression_discord_py_asks_for(fake: FakeDiscord, bot: TinyBot) -> None:
    assert fake.gateway_compression == [discord.utils._ActiveDecompressionContext.COMPRESSION_TYPE]
    assert bot.latency < 10  # the heartbeat was acknowledged
