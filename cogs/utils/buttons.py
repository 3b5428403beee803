"""Every button and select the bot posts, as `DynamicItem`s that survive restarts.

A component's `custom_id` carries the ids it needs (`imagine:u:42:1` is U2 of job 42) and
everything else is read from SQLite when it is pressed, so a button on a month-old message works
after any number of restarts, and nothing about it lives only in memory. The templates below are
the whole custom_id vocabulary; all ids stay far below Discord's 100 characters.

The items only parse and dispatch: the work is done by the cogs (`Imagine`, `History`,
`Settings`), found through `interaction.client`.
"""

from __future__ import annotations

from typing import Any

import discord
from discord import ui

from cogs.utils.errors import guarded
from engine.types import ImagineError

PREFIX = "imagine"
CUSTOM_ID_LIMIT = 100
#: Longest /history search kept in a page button's custom_id.
SEARCH_LIMIT = 60
GRID_BUTTONS = 4


def _cog(interaction: discord.Interaction, name: str) -> Any:
    cog = interaction.client.get_cog(name)  # type: ignore[union-attr]
    if cog is None:
        raise ImagineError("The bot is still starting up; try again in a moment.")
    return cog


# --- a job's grid: U1-U4, 🔄, V1-V4 -----------------------------------------------------------------


class GridButton(ui.DynamicItem[ui.Button], template=rf"{PREFIX}:(?P<action>[uv]):(?P<job>[0-9]{{1,20}}):(?P<index>[0-9])"):
    """U<n> posts image n alone at full quality; V<n> makes four variations of it."""

    def __init__(self, action: str, job_id: int, index: int) -> None:
        super().__init__(
            ui.Button(
                label=f"{action.upper()}{index + 1}",
                style=discord.ButtonStyle.secondary,
                custom_id=f"{PREFIX}:{action}:{job_id}:{index}",
            ),
            row=0 if action == "u" else 1,
        )
        self.action, self.job_id, self.index = action, job_id, index

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: ui.Item[Any], match: Any, /) -> GridButton:
        return cls(match["action"], int(match["job"]), int(match["index"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        if self.action == "u":
            await guarded(interaction, lambda: _cog(interaction, "Imagine").pick(interaction, self.job_id, self.index))
        else:
            await guarded(interaction, lambda: _cog(interaction, "Imagine").vary_grid(interaction, self.job_id, self.index))


class RerollButton(ui.DynamicItem[ui.Button], template=rf"{PREFIX}:r:(?P<job>[0-9]{{1,20}})"):
    """🔄: the same prompt and parameters again, with new seeds."""

    def __init__(self, job_id: int, row: int = 0) -> None:
        super().__init__(
            ui.Button(emoji="🔄", style=discord.ButtonStyle.secondary, custom_id=f"{PREFIX}:r:{job_id}"), row=row
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: ui.Item[Any], match: Any, /) -> RerollButton:
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await guarded(interaction, lambda: _cog(interaction, "Imagine").reroll(interaction, self.job_id))


class CancelButton(ui.DynamicItem[ui.Button], template=rf"{PREFIX}:x:(?P<job>[0-9]{{1,20}})"):
    """❌ on a queued or running job: its owner stops it."""

    def __init__(self, job_id: int) -> None:
        super().__init__(ui.Button(emoji="❌", style=discord.ButtonStyle.secondary, custom_id=f"{PREFIX}:x:{job_id}"))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: ui.Item[Any], match: Any, /) -> CancelButton:
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await guarded(interaction, lambda: _cog(interaction, "Imagine").cancel(interaction, self.job_id))


# --- one image: Vary, Upscale, Favorite ----------------------------------------------------------------


class VaryButton(ui.DynamicItem[ui.Button], template=rf"{PREFIX}:vary:(?P<image>[0-9]{{1,20}}):(?P<mode>subtle|strong)"):
    def __init__(self, image_id: int, mode: str) -> None:
        super().__init__(
            ui.Button(
                label=f"Vary ({mode.title()})",
                emoji="🪄",
                style=discord.ButtonStyle.secondary,
                custom_id=f"{PREFIX}:vary:{image_id}:{mode}",
            ),
            row=0,
        )
        self.image_id, self.mode = image_id, mode

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: ui.Item[Any], match: Any, /) -> VaryButton:
        return cls(int(match["image"]), match["mode"])

    async def callback(self, interaction: discord.Interaction) -> None:
        await guarded(interaction, lambda: _cog(interaction, "Imagine").vary_image(interaction, self.image_id, self.mode))


class UpscaleButton(ui.DynamicItem[ui.Button], template=rf"{PREFIX}:up:(?P<image>[0-9]{{1,20}}):(?P<mode>subtle|creative)"):
    def __init__(self, image_id: int, mode: str) -> None:
        super().__init__(
            ui.Button(
                label=f"Upscale ({mode.title()})",
                emoji="🔍",
                style=discord.ButtonStyle.secondary,
                custom_id=f"{PREFIX}:up:{image_id}:{mode}",
            ),
            row=1,
        )
        self.image_id, self.mode = image_id, mode

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: ui.Item[Any], match: Any, /) -> UpscaleButton:
        return cls(int(match["image"]), match["mode"])

    async def callback(self, interaction: discord.Interaction) -> None:
        await guarded(interaction, lambda: _cog(interaction, "Imagine").upscale(interaction, self.image_id, self.mode))


class FavoriteButton(ui.DynamicItem[ui.Button], template=rf"{PREFIX}:fav:(?P<image>[0-9]{{1,20}})"):
    def __init__(self, image_id: int) -> None:
        super().__init__(
            ui.Button(
                label="Favorite", emoji="❤️", style=discord.ButtonStyle.secondary, custom_id=f"{PREFIX}:fav:{image_id}"
            ),
            row=0,
        )
        self.image_id = image_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: ui.Item[Any], match: Any, /) -> FavoriteButton:
        return cls(int(match["image"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await guarded(interaction, lambda: _cog(interaction, "Imagine").favorite(interaction, self.image_id))


# --- /history pages ------------------------------------------------------------------------------------


class HistoryPageButton(
    ui.DynamicItem[ui.Button], template=rf"{PREFIX}:h:(?P<dir>[pn]):(?P<page>[0-9]{{1,6}}):(?P<search>.{{0,{SEARCH_LIMIT}}})"
):
    """◀ / ▶ under /history; the search travels in the custom_id, the results are read again."""

    def __init__(self, direction: str, page: int, search: str, disabled: bool = False) -> None:
        super().__init__(
            ui.Button(
                label="◀ Newer" if direction == "p" else "Older ▶",
                style=discord.ButtonStyle.secondary,
                custom_id=f"{PREFIX}:h:{direction}:{page}:{search[:SEARCH_LIMIT]}",
                disabled=disabled,
            )
        )
        self.page, self.search = page, search[:SEARCH_LIMIT]

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: ui.Item[Any], match: Any, /) -> HistoryPageButton:
        return cls(match["dir"], int(match["page"]), match["search"])

    async def callback(self, interaction: discord.Interaction) -> None:
        await guarded(interaction, lambda: _cog(interaction, "History").turn_page(interaction, self.page, self.search))


# --- /settings -------------------------------------------------------------------------------------------

SELECT_FIELDS = ("ar", "quality", "style", "model")
BUTTON_FIELDS = ("remix", "private", "negative", "reset")


class SettingSelect(ui.DynamicItem[ui.Select], template=rf"{PREFIX}:set:(?P<field>{'|'.join(SELECT_FIELDS)})"):
    """A select in /settings; its options are built by the Settings cog, the choice saved at once."""

    def __init__(self, field: str, select: ui.Select | None = None, options: list[discord.SelectOption] | None = None,
                 placeholder: str | None = None, row: int | None = None) -> None:
        if select is None:
            select = ui.Select(custom_id=f"{PREFIX}:set:{field}", options=options or [], placeholder=placeholder)
        super().__init__(select, row=row)
        self.field = field

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: ui.Item[Any], match: Any, /) -> SettingSelect:
        assert isinstance(item, ui.Select)
        return cls(match["field"], select=item)

    async def callback(self, interaction: discord.Interaction) -> None:
        await guarded(interaction, lambda: _cog(interaction, "Settings").choose(interaction, self.field, list(self.item.values)))


class SettingButton(ui.DynamicItem[ui.Button], template=rf"{PREFIX}:set:(?P<field>{'|'.join(BUTTON_FIELDS)})"):
    LABELS = {"remix": "Remix", "private": "Private", "negative": "Negative prompt…", "reset": "Reset"}

    def __init__(self, field: str, on: bool = False) -> None:
        toggle = field in ("remix", "private")
        style = discord.ButtonStyle.success if toggle and on else discord.ButtonStyle.secondary
        if field == "reset":
            style = discord.ButtonStyle.danger
        label = self.LABELS[field] + (": on" if on else ": off") if toggle else self.LABELS[field]
        super().__init__(ui.Button(label=label, style=style, custom_id=f"{PREFIX}:set:{field}"), row=4)
        self.field = field

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: ui.Item[Any], match: Any, /) -> SettingButton:
        return cls(match["field"])

    async def callback(self, interaction: discord.Interaction) -> None:
        await guarded(interaction, lambda: _cog(interaction, "Settings").press(interaction, self.field))


DYNAMIC_ITEMS: tuple[type[ui.DynamicItem[Any]], ...] = (
    GridButton,
    RerollButton,
    CancelButton,
    VaryButton,
    UpscaleButton,
    FavoriteButton,
    HistoryPageButton,
    SettingSelect,
    SettingButton,
)


# --- the views that carry them ----------------------------------------------------------------------------


def grid_view(job_id: int, count: int = GRID_BUTTONS) -> ui.View:
    """Midjourney's layout: U1-U4 and 🔄 on the first row, V1-V4 on the second."""
    view = ui.View(timeout=None)
    for index in range(min(count, GRID_BUTTONS)):
        view.add_item(GridButton("u", job_id, index))
    view.add_item(RerollButton(job_id, row=0))
    for index in range(min(count, GRID_BUTTONS)):
        view.add_item(GridButton("v", job_id, index))
    return view


def image_view(image_id: int) -> ui.View:
    """Under one image: Vary (Subtle/Strong) and ❤️ Favorite, then Upscale (Subtle/Creative)."""
    view = ui.View(timeout=None)
    view.add_item(VaryButton(image_id, "subtle"))
    view.add_item(VaryButton(image_id, "strong"))
    view.add_item(FavoriteButton(image_id))
    view.add_item(UpscaleButton(image_id, "subtle"))
    view.add_item(UpscaleButton(image_id, "creative"))
    return view


def cancel_view(job_id: int) -> ui.View:
    view = ui.View(timeout=None)
    view.add_item(CancelButton(job_id))
    return view


def retry_view(job_id: int) -> ui.View:
    view = ui.View(timeout=None)
    view.add_item(RerollButton(job_id))
    return view


def history_view(page: int, pages: int, search: str) -> ui.View:
    view = ui.View(timeout=None)
    view.add_item(HistoryPageButton("p", max(0, page - 1), search, disabled=page <= 0))
    view.add_item(HistoryPageButton("n", min(page + 1, max(0, pages - 1)), search, disabled=page >= pages - 1))
    return view
