"""/settings: a person's defaults for /imagine, changed with selects and buttons.

The defaults apply before the prompt's own parameters, so `--ar 1:1` typed in a prompt still wins
over a saved 16:9. Every control is a persistent item (see `cogs.utils.buttons`): a /settings
message keeps working after a restart, and each change is saved at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from cogs.utils.buttons import SettingButton, SettingSelect
from cogs.utils.errors import guarded
from cogs.utils.rendering import shorten
from engine.params import QUALITIES
from engine.styles import STYLE_NAMES, normalize_style
from engine.types import ImagineError

if TYPE_CHECKING:
    from bot import ImagineBot
    from storage import UserSettings

ASPECT_RATIOS = ("1:1", "4:5", "5:4", "2:3", "3:2", "3:4", "4:3", "9:16", "16:9", "1:2", "2:1", "21:9")
QUALITY_LABELS = {0.25: ".25: fastest", 0.5: ".5: fast", 1.0: "1: the model's default", 2.0: "2: slowest, most detail"}
NEGATIVE_LIMIT = 1000
MAX_OPTIONS = 25
NONE = "none"


def _quality_text(value: float) -> str:
    return f"{value:g}".removeprefix("0")


class NegativePromptModal(discord.ui.Modal, title="Negative prompt"):
    """What to leave out of every image, added to any --no typed in a prompt."""

    text: discord.ui.TextInput[NegativePromptModal] = discord.ui.TextInput(
        label="Leave out (empty: nothing)",
        style=discord.TextStyle.paragraph,
        required=False,
        max_length=NEGATIVE_LIMIT,
        placeholder="blurry, text, watermark",
        custom_id="imagine:settings:negative",
    )

    def __init__(self, cog: Settings, current: str | None) -> None:
        super().__init__(timeout=15 * 60)
        self.cog = cog
        self.text.default = current or ""

    async def on_submit(self, interaction: discord.Interaction) -> None:
        value = " ".join(self.text.value.split()) or None
        await guarded(interaction, lambda: self.cog.save(interaction, negative_prompt=value))


class Settings(commands.Cog):
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    @app_commands.command(name="settings", description="Your defaults for /imagine: aspect ratio, quality, style, model…")
    async def settings(self, interaction: discord.Interaction) -> None:
        async def answer() -> None:
            current = await self.bot.storage.get_settings(interaction.user.id)
            await interaction.response.send_message(embed=self.embed(current), view=self.view(current), ephemeral=True)

        await guarded(interaction, answer)

    # -- what the message shows ----------------------------------------------------------------

    def embed(self, s: UserSettings) -> discord.Embed:
        embed = discord.Embed(title="Your /imagine settings", description="Typed parameters always win over these.")
        embed.add_field(name="Aspect ratio", value=s.aspect_ratio or "1:1 (default)")
        embed.add_field(name="Quality", value=_quality_text(s.quality) if s.quality is not None else "1 (default)")
        embed.add_field(name="Style", value=s.style or NONE)
        embed.add_field(name="Model", value=s.model or f"{self.bot.engine.profile().name} (default)")
        embed.add_field(name="Remix", value="on: V and Vary ask for a new prompt first" if s.remix else "off")
        embed.add_field(name="Private", value="on: results only you can see" if s.private else "off")
        embed.add_field(
            name="Negative prompt",
            value=discord.utils.escape_markdown(shorten(s.negative_prompt, 1000)) if s.negative_prompt else "-",
            inline=False,
        )
        return embed

    def view(self, s: UserSettings) -> discord.ui.View:
        view = discord.ui.View(timeout=None)
        view.add_item(SettingSelect("ar", placeholder="Aspect ratio", row=0, options=[
            discord.SelectOption(label=ratio, value=ratio, default=ratio == (s.aspect_ratio or "1:1"))
            for ratio in ASPECT_RATIOS
        ]))
        view.add_item(SettingSelect("quality", placeholder="Quality", row=1, options=[
            discord.SelectOption(label=label, value=_quality_text(q), default=q == (s.quality or 1.0))
            for q, label in QUALITY_LABELS.items()
        ]))
        view.add_item(SettingSelect("style", placeholder="Style", row=2, options=[
            discord.SelectOption(label=name, value=name, default=name == (s.style or NONE))
            for name in (NONE, *STYLE_NAMES)
        ][:MAX_OPTIONS]))
        models = ["default", *self.bot.engine.models()][:MAX_OPTIONS]
        view.add_item(SettingSelect("model", placeholder="Model", row=3, options=[
            discord.SelectOption(label=shorten(name, 100), value=name[:100], default=name == (s.model or "default"))
            for name in models
        ]))
        view.add_item(SettingButton("remix", on=s.remix))
        view.add_item(SettingButton("private", on=s.private))
        view.add_item(SettingButton("negative"))
        view.add_item(SettingButton("reset"))
        return view

    # -- what the controls do ----------------------------------------------------------------------

    async def save(self, interaction: discord.Interaction, **changes: object) -> None:
        updated = await self.bot.storage.update_settings(interaction.user.id, **changes)
        await interaction.response.edit_message(embed=self.embed(updated), view=self.view(updated))

    async def choose(self, interaction: discord.Interaction, field: str, values: list[str]) -> None:
        """A select changed; the value is checked again, since a client can send anything."""
        if len(values) != 1:
            raise ImagineError("Choose one value.")
        value = values[0]
        if field == "ar":
            if value not in ASPECT_RATIOS:
                raise ImagineError(f"{value} is not one of the offered aspect ratios.")
            await self.save(interaction, aspect_ratio=None if value == "1:1" else value)
        elif field == "quality":
            quality = float(value) if value.replace(".", "", 1).isdigit() else -1.0
            if quality not in QUALITIES:
                raise ImagineError(f"Quality {value} is not one of {', '.join(map(_quality_text, QUALITIES))}.")
            await self.save(interaction, quality=None if quality == 1.0 else quality)
        elif field == "style":
            style = None if value == NONE else normalize_style(value)
            if value != NONE and style is None:
                raise ImagineError(f"{value} is not a known style.")
            await self.save(interaction, style=style)
        elif field == "model":
            if value != "default" and value not in self.bot.engine.models():
                raise ImagineError(f"{value} is not a model this bot has.")
            await self.save(interaction, model=None if value == "default" else value)
        else:
            raise ImagineError(f"Unknown setting {field}.")

    async def press(self, interaction: discord.Interaction, field: str) -> None:
        current = await self.bot.storage.get_settings(interaction.user.id)
        if field == "remix":
            await self.save(interaction, remix=not current.remix)
        elif field == "private":
            await self.save(interaction, private=not current.private)
        elif field == "negative":
            await interaction.response.send_modal(NegativePromptModal(self, current.negative_prompt))
        elif field == "reset":
            await self.save(interaction, aspect_ratio=None, quality=None, negative_prompt=None, style=None,
                            model=None, remix=False, private=False)
        else:
            raise ImagineError(f"Unknown setting {field}.")


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(Settings(bot))
