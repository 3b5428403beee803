"""Looking back: /history (your jobs, searchable, paged), /show (post a job again) and /info.

These only read storage and the queue; the answers are ephemeral because they concern only the
person who asked, except /show, which posts a result with working buttons for everyone.
"""

from __future__ import annotations

import asyncio
import io
import math
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from cogs.utils import buttons
from cogs.utils.errors import guarded
from cogs.utils.images import fit_upload
from cogs.utils.jobs import file_name
from cogs.utils.rendering import grid_png, history_line, job_content, jump_url, kind_label, shorten
from engine.params import format_prompt
from engine.types import FinishReason, ImageResult, ImagineError

if TYPE_CHECKING:
    from bot import ImagineBot
    from storage import Job

PER_PAGE = 10


class History(commands.Cog):
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    # -- /history --------------------------------------------------------------------------------

    @app_commands.command(name="history", description="Your recent jobs with their prompts, seeds and links")
    @app_commands.describe(search="Only jobs whose prompt contains this", page="Page number; 1 is the newest")
    async def history(
        self,
        interaction: discord.Interaction,
        search: app_commands.Range[str, 1, buttons.SEARCH_LIMIT] | None = None,
        page: app_commands.Range[int, 1, 100_000] = 1,
    ) -> None:
        async def answer() -> None:
            embed, view = await self.render(interaction.user.id, search or "", page - 1)
            await interaction.response.send_message(embed=embed, view=view, ephemeral=True)

        await guarded(interaction, answer)

    async def turn_page(self, interaction: discord.Interaction, page: int, search: str) -> None:
        embed, view = await self.render(interaction.user.id, search, page)
        await interaction.response.edit_message(embed=embed, view=view)

    async def render(self, user_id: int, search: str, page: int) -> tuple[discord.Embed, discord.ui.View]:
        storage = self.bot.storage
        jobs, total = await storage.history(user_id, search or None, page, PER_PAGE)
        pages = max(1, math.ceil(total / PER_PAGE))
        if page >= pages:
            page = pages - 1
            jobs, total = await storage.history(user_id, search or None, page, PER_PAGE)
        lines = [
            history_line(
                job.id,
                format_prompt(job.request, self.bot.runner.profile(job.request.model)),
                job.status,
                job.created_at,
                jump_url(job.guild_id, job.channel_id, job.message_id),
            )
            for job in jobs
        ]
        title = "Your jobs" + (f" matching “{shorten(search, 40)}”" if search else "")
        if not lines:
            lines = ["Nothing found." if search else "No jobs yet: try /imagine."]
        embed = discord.Embed(title=title, description="\n\n".join(lines)[:4096])
        embed.set_footer(text=f"Page {page + 1} of {pages} · {total} job{'s' if total != 1 else ''} · /show job:<id> posts one again")
        return embed, buttons.history_view(page, pages, search)

    # -- /show -----------------------------------------------------------------------------------

    @app_commands.command(name="show", description="Post a past job again, with working buttons")
    @app_commands.describe(job="The job's number, as /history shows it (#42 → 42)")
    async def show(self, interaction: discord.Interaction, job: app_commands.Range[int, 1]) -> None:
        await guarded(interaction, lambda: self._show(interaction, job))

    async def _show(self, interaction: discord.Interaction, job: int) -> None:
        storage, runner = self.bot.storage, self.bot.runner
        found = await storage.get_job(job)
        if found is None:
            raise ImagineError(f"There is no job #{job}.")
        if found.user_id != interaction.user.id and (
            found.private or (await storage.get_settings(found.user_id)).private
        ):
            raise ImagineError(f"Job #{job} belongs to someone who keeps their results private.")
        private = (await storage.get_settings(interaction.user.id)).private
        if found.status != "done":
            reason = f": {found.error}" if found.error else "."
            view = buttons.retry_view(found.id) if found.finished else discord.utils.MISSING
            await interaction.response.send_message(
                runner.content(found, f"\nJob #{found.id} is {found.status}{reason}"), view=view, ephemeral=True,
                allowed_mentions=discord.AllowedMentions.none(),
            )
            return
        await interaction.response.defer(thinking=True, ephemeral=private)
        data, view, spoiler, label = await self._result(found)
        data, name = await asyncio.to_thread(
            fit_upload, data, file_name(found.request.prompt, found.id), interaction.filesize_limit
        )
        content = job_content(found.request, runner.profile(found.request.model), found.user_id, label)
        await interaction.followup.send(
            content,
            file=discord.File(io.BytesIO(data), name, spoiler=spoiler),
            view=view,
            allowed_mentions=discord.AllowedMentions.none(),
        )

    async def _result(self, job: Job) -> tuple[bytes, discord.ui.View, bool, str | None]:
        storage = self.bot.storage
        images = await storage.job_images(job.id)
        if not images:
            raise ImagineError(f"Job #{job.id} has no images left.")
        spoiler = any(image.finish_reason == FinishReason.FILTERED.value for image in images)
        label = kind_label(job.kind, job.request.strength)
        if job.kind == "single" and job.parent_image_id is not None:
            parent = await storage.get_image(job.parent_image_id)
            label = f"Image #{parent.index + 1}" if parent else None
        if len(images) == 1:
            return await storage.read_png(images[0]), buttons.image_view(images[0].id), spoiler, label
        grid = await storage.read_grid(job.id)
        if grid is None:
            pngs = [await storage.read_png(image) for image in images]
            grid = await asyncio.to_thread(grid_png, [
                ImageResult(png=p, seed=i.seed, index=i.index, width=i.width, height=i.height)
                for p, i in zip(pngs, images, strict=True)
            ])
        return grid, buttons.grid_view(job.id, len(images)), spoiler, label

    # -- /info -----------------------------------------------------------------------------------

    @app_commands.command(name="info", description="Your queued and running jobs, the queue, the engine and model")
    async def info(self, interaction: discord.Interaction) -> None:
        await guarded(interaction, lambda: self._info(interaction))

    async def _info(self, interaction: discord.Interaction) -> None:
        bot, user_id = self.bot, interaction.user.id
        queue = bot.runner.queue
        lines = [await self._queue_line(int(queued.job_id), "running") for queued in queue.running(user_id)]
        for number, queued in enumerate(queue.waiting(), start=1):
            if queued.owner == user_id:
                lines.append(await self._queue_line(int(queued.job_id), f"number {number} in the queue"))
        embed = discord.Embed(title="imagine")
        embed.add_field(name="Your jobs", value="\n".join(lines)[:1024] or "Nothing queued or running.", inline=False)
        embed.add_field(
            name="Queue",
            value=(
                f"{len(queue.running())} running, {len(queue.waiting())} waiting.\n"
                f"Limits: {queue.per_user_running} running and {queue.per_user_waiting} waiting per person, "
                f"{queue.max_waiting} waiting in all."
            ),
            inline=False,
        )
        engine = bot.engine.describe()
        embed.add_field(name="Engine", value=shorten(", ".join(f"{k}: {v}" for k, v in engine.items()), 1024), inline=False)
        embed.add_field(name="Models", value=shorten(", ".join(bot.engine.models()), 1024) or "-", inline=False)
        await interaction.response.send_message(embed=embed, ephemeral=True)

    async def _queue_line(self, job_id: int, where: str) -> str:
        job = await self.bot.storage.get_job(job_id)
        prompt = shorten(job.request.prompt, 60) if job else "?"
        return f"`#{job_id}` {where}: {discord.utils.escape_markdown(prompt)}"


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(History(bot))
