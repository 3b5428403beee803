"""/imagine and what the buttons under its results do.

Every action follows the same order: check everything that can be checked cheaply (the prompt,
the attachment's type and size, the user's room in the queue) and refuse with a private message
before anything is shown or stored; then acknowledge (defer) within Discord's 3 seconds; then
store the job and hand it to the queue (see `cogs.utils.jobs`).

Anyone may press a button under anyone's result; the new job is the presser's: their settings,
their limits, their history.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from cogs.utils import derive
from cogs.utils.errors import PRIVATE_DEFER, guarded, send_error
from cogs.utils.images import InputImageError, check_upload, load_upload
from engine.params import format_prompt, parse_prompt, parse_prompts
from engine.types import MAX_PROMPT_CHARS, GenerationRequest, ImagineError

if TYPE_CHECKING:
    from bot import ImagineBot
    from cogs.utils.jobs import JobRunner
    from storage import ImageRecord, Job

log = logging.getLogger(__name__)


class RemixModal(discord.ui.Modal, title="Remix"):
    """Remix mode: edit the prompt (and its parameters) before a variation is made."""

    prompt: discord.ui.TextInput[RemixModal] = discord.ui.TextInput(
        label="Prompt", style=discord.TextStyle.paragraph, max_length=4000, custom_id="imagine:remix:prompt"
    )

    def __init__(self, text: str, submit: Callable[[discord.Interaction, str], Awaitable[None]]) -> None:
        super().__init__(timeout=15 * 60)
        self.prompt.default = text[:4000]
        self._submit = submit

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await guarded(interaction, lambda: self._submit(interaction, self.prompt.value))


class ConfirmPermutations(discord.ui.View):
    """Midjourney asks before a permutation prompt fans out into many jobs; so do we.

    A short-lived, in-memory question: it concerns work not yet stored anywhere, so after a
    restart the user simply types the command again.
    """

    def __init__(self, cog: Imagine, owner_id: int, requests: list[GenerationRequest],
                 image: discord.Attachment | None, private: bool) -> None:
        super().__init__(timeout=300)
        self.cog, self.owner_id, self.requests, self.image, self.private = cog, owner_id, requests, image, private

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return interaction.user.id == self.owner_id

    @discord.ui.button(label="Yes, queue them all", style=discord.ButtonStyle.success)
    async def confirm(self, interaction: discord.Interaction, _button: discord.ui.Button[ConfirmPermutations]) -> None:
        self.stop()

        async def go() -> None:
            self.cog.runner.check_room(interaction.user.id, len(self.requests))
            await interaction.response.edit_message(content=f"Queuing {len(self.requests)} jobs…", view=None)
            await self.cog.queue_requests(interaction, self.requests, self.image, private=self.private, followup_all=True)

        await guarded(interaction, go)

    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.secondary)
    async def decline(self, interaction: discord.Interaction, _button: discord.ui.Button[ConfirmPermutations]) -> None:
        self.stop()
        await interaction.response.edit_message(content="Nothing was queued.", view=None)


class Imagine(commands.Cog):
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    @property
    def runner(self) -> JobRunner:
        return self.bot.runner

    # -- /imagine ----------------------------------------------------------------------------------

    @app_commands.command(name="imagine", description="Draw four images from a prompt; --ar 3:2, --seed 7, --no text… work")
    @app_commands.describe(
        prompt="What to draw, then any parameters: --ar 16:9 --seed 42 --no people --q .5 --style anime",
        image="An image to start from (image prompt): PNG, JPEG or WebP",
    )
    async def imagine(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, MAX_PROMPT_CHARS],
        image: discord.Attachment | None = None,
    ) -> None:
        await guarded(interaction, lambda: self._imagine(interaction, prompt, image))

    async def _imagine(self, interaction: discord.Interaction, prompt: str, image: discord.Attachment | None) -> None:
        storage, config = self.bot.storage, self.bot.config
        settings = await storage.get_settings(interaction.user.id)
        requests = parse_prompts(prompt, self.bot.engine.profile, settings.to_defaults())
        if image is not None:
            check_upload(image.filename, image.content_type, image.size, config.max_input_bytes)
        self.runner.check_room(interaction.user.id, len(requests))
        if len(requests) > config.confirm_permutations_over:
            view = ConfirmPermutations(self, interaction.user.id, requests, image, settings.private)
            await interaction.response.send_message(
                f"This prompt makes **{len(requests)} jobs** ({4 * len(requests)} images). Queue them all?",
                view=view,
                ephemeral=True,
            )
            return
        if image is None:
            await interaction.response.defer(thinking=True, ephemeral=settings.private)
            await self.queue_requests(interaction, requests, None, private=settings.private)
            return
        # The image is only checked once downloaded, after the defer: a private defer keeps a
        # refusal private, and the jobs follow as messages of their own.
        await interaction.response.defer(thinking=True, ephemeral=True)
        interaction.extras[PRIVATE_DEFER] = True
        await self.queue_requests(interaction, requests, image, private=settings.private, followup_all=True)

    async def queue_requests(
        self,
        interaction: discord.Interaction,
        requests: list[GenerationRequest],
        image: discord.Attachment | None,
        *,
        private: bool,
        followup_all: bool = False,
    ) -> None:
        """Queue one job per request; the first takes the deferred response unless `followup_all`."""
        if image is not None:
            try:
                data = await image.read()
                png, _, _ = await asyncio.to_thread(load_upload, data, self.bot.config.max_input_pixels, image.filename)
            except discord.HTTPException:
                await send_error(interaction, f"Could not download `{image.filename}` from Discord; try again.")
                return
            except InputImageError as error:
                await send_error(interaction, str(error))
                return
            requests = [request.replace(init_image=png) for request in requests]
            if interaction.extras.get(PRIVATE_DEFER):
                await interaction.edit_original_response(content=f"Using `{image.filename}` as the image prompt.")
        for number, request in enumerate(requests):
            await self.runner.start(
                interaction, request, kind="imagine", ephemeral=private, followup=followup_all or number > 0
            )

    # -- the buttons -------------------------------------------------------------------------------

    async def _job(self, job_id: int) -> Job:
        job = await self.bot.storage.get_job(job_id)
        if job is None:
            raise ImagineError(f"Job #{job_id} no longer exists.")
        return job

    async def _grid_image(self, job_id: int, index: int) -> tuple[Job, ImageRecord]:
        job = await self._job(job_id)
        record = await self.bot.storage.image_for(job_id, index)
        if record is None:
            raise ImagineError(f"Job #{job_id} has no image {index + 1}" + ("." if job.finished else " yet."))
        return job, record

    async def _image(self, image_id: int) -> tuple[Job, ImageRecord]:
        record = await self.bot.storage.get_image(image_id)
        if record is None:
            raise ImagineError(f"Image #{image_id} no longer exists.")
        return await self._job(record.job_id), record

    async def _start(
        self, interaction: discord.Interaction, request: GenerationRequest, *, kind: str, parent: int | None
    ) -> None:
        """A button's new job, owned by whoever pressed it."""
        settings = await self.bot.storage.get_settings(interaction.user.id)
        self.runner.check_room(interaction.user.id)
        request.validate(self.runner.profile(request.model).size_multiple)
        await interaction.response.defer(thinking=True, ephemeral=settings.private)
        await self.runner.start(interaction, request, kind=kind, parent_image_id=parent, ephemeral=settings.private)

    async def pick(self, interaction: discord.Interaction, job_id: int, index: int) -> None:
        """U1-U4: that image alone, decoded at full quality, with its own buttons."""
        job, record = await self._grid_image(job_id, index)
        await self._start(interaction, derive.single(job.request, record.seed), kind="single", parent=record.id)

    async def vary_grid(self, interaction: discord.Interaction, job_id: int, index: int) -> None:
        """V1-V4: four strong variations of that image."""
        job, record = await self._grid_image(job_id, index)
        await self._vary(interaction, job, record, derive.VARIATION_STRENGTH, "variation")

    async def vary_image(self, interaction: discord.Interaction, image_id: int, mode: str) -> None:
        job, record = await self._image(image_id)
        await self._vary(interaction, job, record, derive.VARY_STRENGTH[mode], "vary")

    async def _vary(self, interaction: discord.Interaction, job: Job, record: ImageRecord, strength: float, kind: str) -> None:
        storage = self.bot.storage
        png = await storage.read_png(record)
        if not (await storage.get_settings(interaction.user.id)).remix:
            await self._start(interaction, derive.variation(job.request, png, strength), kind=kind, parent=record.id)
            return
        self.runner.check_room(interaction.user.id)  # before the modal, not after the typing

        async def remixed(modal_interaction: discord.Interaction, text: str) -> None:
            fresh = await storage.get_settings(modal_interaction.user.id)
            request = parse_prompt(text, self.bot.engine.profile, fresh.to_defaults())
            await self._start(modal_interaction, derive.variation(request, png, strength), kind=kind, parent=record.id)

        text = derive.remix_text(format_prompt(job.request, self.runner.profile(job.request.model)))
        await interaction.response.send_modal(RemixModal(text, remixed))

    async def reroll(self, interaction: discord.Interaction, job_id: int) -> None:
        """🔄: the same prompt again with new seeds (a failed decode is simply tried again)."""
        job = await self._job(job_id)
        if job.kind == "single":
            await self._start(interaction, job.request, kind="single", parent=job.parent_image_id)
            return
        kind = "reroll" if job.kind in ("imagine", "reroll") else job.kind
        await self._start(interaction, derive.reroll(job.request), kind=kind, parent=job.parent_image_id)

    async def upscale(self, interaction: discord.Interaction, image_id: int, mode: str) -> None:
        """Upscale (Subtle/Creative): the image at twice its size, redrawn lightly or more freely."""
        job, record = await self._image(image_id)
        png = await self.bot.storage.read_png(record)
        request = derive.upscale(
            job.request, png, record.width, record.height, record.seed,
            derive.UPSCALE_STRENGTH[mode], self.runner.profile(job.request.model),
        )
        await self._start(interaction, request, kind="upscale", parent=record.id)

    async def favorite(self, interaction: discord.Interaction, image_id: int) -> None:
        now = await self.bot.storage.toggle_favorite(interaction.user.id, image_id)
        text = "❤️ Added to your favorites." if now else "Removed from your favorites."
        await interaction.response.send_message(text, ephemeral=True)

    async def cancel(self, interaction: discord.Interaction, job_id: int) -> None:
        await self.runner.cancel(interaction, job_id)


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(Imagine(bot))
