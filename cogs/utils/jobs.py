"""From a queued job to a finished message: the queue's worker, progress edits, the final post.

A job's life is: a row in storage (queued) and a message in Discord that shows it ("Waiting to
start"), then the queue's worker runs it (live percentage and a cheap preview, at most every
`progress_interval` seconds), stores its images and edits the message into the grid with its
buttons. Failures and cancellations end the same message with a short reason and a 🔄.

Messages are reached through the interaction's webhook while its token is valid (15 minutes), and
through the channel with the bot's own REST client after that or after a restart, when no token is
left; tokens are never stored.

The same queue also runs work from outside Discord (the HTTP image API inside the bot, see
`submit_work`): it takes turns with the Discord jobs but has no message and no stored row.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import io
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import discord

from cogs.utils import buttons
from cogs.utils.errors import ORIGINAL_USED
from cogs.utils.images import fit_upload
from cogs.utils.rendering import grid_png, job_content, kind_label, progress_status, waiting_status
from engine.queue import JobQueue, QueuedJob, QueueFull
from engine.types import (
    ContentFiltered,
    FinishReason,
    GenerationRequest,
    ImageResult,
    ImagineError,
    ModelProfile,
    Progress,
)

if TYPE_CHECKING:
    from cogs.utils.config import BotConfig
    from engine.base import Engine
    from storage import Job, Storage

log = logging.getLogger(__name__)

#: Interaction tokens live 15 minutes; after 14 the channel is used instead, to be safe.
TOKEN_LIFETIME = 14 * 60
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
RESTART_FAILURE = "The bot restarted before this job finished. Press 🔄 to run it again."


def file_name(prompt: str, job_id: int, suffix: str = "png") -> str:
    """`a_fox_in_the_snow_42.png`: readable in the client and in people's download folders."""
    words = re.sub(r"[^A-Za-z0-9]+", "_", prompt).strip("_")[:48] or "image"
    return f"{words}_{job_id}.{suffix}"


@dataclass
class JobMessage:
    """Where a job shows up, and how to edit it now.

    `interaction` is the one that created the message (None after a restart); `original` says
    whether the message is that interaction's own response or a followup of it.
    """

    bot: discord.Client
    user_id: int
    channel_id: int | None
    message_id: int | None
    interaction: discord.Interaction | None = None
    original: bool = True
    ephemeral: bool = False
    created: float = field(default_factory=time.monotonic)
    #: The job started or was cancelled: "waiting" edits must not land any more.
    done_waiting: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def _token_fresh(self) -> bool:
        return self.interaction is not None and time.monotonic() - self.created < TOKEN_LIFETIME

    @property
    def upload_limit(self) -> int:
        if self.interaction is not None:
            return self.interaction.filesize_limit
        channel = self.bot.get_channel(self.channel_id) if self.channel_id else None
        guild = getattr(channel, "guild", None)
        return guild.filesize_limit if guild is not None else DEFAULT_UPLOAD_LIMIT

    async def edit(self, *, while_waiting: bool = False, **fields: Any) -> None:
        """Edit the message; with no way left to edit it (ephemeral after a restart), DM the owner.

        `while_waiting` skips the edit once the job has started or was cancelled, so a late
        "waiting" never overwrites progress or the end.
        """
        fields.setdefault("allowed_mentions", discord.AllowedMentions(users=[discord.Object(self.user_id)]))
        async with self.lock:
            if while_waiting and self.done_waiting:
                return
            if self._token_fresh():
                assert self.interaction is not None
                if self.original:
                    await self.interaction.edit_original_response(**fields)
                else:
                    assert self.message_id is not None
                    await self.interaction.followup.edit_message(self.message_id, **fields)
                return
            if self.channel_id is not None and self.message_id is not None and not self.ephemeral:
                try:
                    channel = self.bot.get_partial_messageable(self.channel_id)
                    await channel.get_partial_message(self.message_id).edit(**fields)
                    return
                except (discord.NotFound, discord.Forbidden):
                    log.info("message %s of job owner %s is gone; sending a new one", self.message_id, self.user_id)
            await self._send_new(fields)

    async def _send_new(self, fields: dict[str, Any]) -> None:
        """Post instead of edit: into the channel if we can, else to the owner's DMs."""
        fields = dict(fields)
        attachments = fields.pop("attachments", None)
        if attachments:
            fields["files"] = attachments
        if self.channel_id is not None and not self.ephemeral:
            with contextlib.suppress(discord.NotFound, discord.Forbidden):
                message = await self.bot.get_partial_messageable(self.channel_id).send(**fields)
                self.message_id = message.id
                return
        user = self.bot.get_user(self.user_id) or await self.bot.fetch_user(self.user_id)
        message = await user.send(**fields)
        self.channel_id, self.message_id, self.ephemeral = message.channel.id, message.id, False


@dataclass
class Progressor:
    """Turns the engine's per-step callbacks into message edits, at most one per interval.

    Edits run as tasks so the engine never waits on Discord, and only one is in flight at a time;
    a step that arrives while one is sending is simply skipped. A step's message (the engine
    retrying on another server, say) is kept and shown under the percentage of every later edit,
    so a skipped step cannot lose it. Engines call back from wherever their work ran (a thread's
    context), so each callback runs in the job's own context.
    """

    message: JobMessage
    text: Callable[[str], str]  # the message content for a status such as "(40%)"
    interval: float
    last: float = float("-inf")
    note: str | None = None
    task: asyncio.Task[None] | None = None
    context: contextvars.Context = field(default_factory=contextvars.copy_context)

    def __call__(self, progress: Progress) -> None:
        self.context.run(self._step, progress)

    def _step(self, progress: Progress) -> None:
        if progress.message:
            self.note = progress.message
        now = time.monotonic()
        if progress.step >= progress.total or now - self.last < self.interval:
            return
        if self.task is not None and not self.task.done():
            return
        self.last = now
        fields: dict[str, Any] = {"content": self.text(progress_status(progress.step, progress.total, self.note))}
        if progress.preview:
            fields["attachments"] = [discord.File(io.BytesIO(progress.preview), "preview.jpg")]
        self.task = asyncio.get_running_loop().create_task(self._send(fields))

    async def _send(self, fields: dict[str, Any]) -> None:
        try:
            await self.message.edit(**fields)
        except discord.HTTPException:
            log.warning("a progress edit failed", exc_info=True)

    async def finish(self) -> None:
        """Let the last progress edit land before the final one, so it cannot overwrite the result."""
        if self.task is not None:
            with contextlib.suppress(Exception):
                await self.task


@dataclass
class Place:
    """A waiting job's message and the place in the queue it shows, so it is edited only on a change."""

    job: Job
    message: JobMessage
    position: int
    note: str = ""


class JobRunner:
    """The bot's side of the queue: start jobs from interactions, run them, show the outcome."""

    def __init__(self, bot: discord.Client, storage: Storage, engine: Engine, config: BotConfig) -> None:
        self.bot = bot
        self.storage = storage
        self.engine = engine
        self.config = config
        self.queue = JobQueue(
            self._run,
            slots=max(1, getattr(engine, "slots", 1)),
            per_user_running=config.user_running,
            per_user_waiting=config.user_waiting,
            max_waiting=config.max_queue,
        )
        #: Jobs whose owner pressed ❌ while they ran: their CancelledError is a cancel, not a shutdown.
        self.user_cancelled: set[int] = set()
        #: Waiting jobs by id, with the place their message shows.
        self.places: dict[int, Place] = {}
        self._places_task: asyncio.Task[None] | None = None
        self._places_edited = float("-inf")

    # -- helpers ---------------------------------------------------------------------------------

    def profile(self, model: str | None) -> ModelProfile:
        """The model's profile for describing a request; a model removed from the config still describes."""
        try:
            return self.engine.profile(model)
        except ImagineError:
            return self.engine.profile(None)

    def content(self, job: Job, status: str | None = None) -> str:
        return job_content(
            job.request, self.profile(job.request.model), job.user_id, kind_label(job.kind, job.request.strength), status
        )

    def check_room(self, owner: int, count: int = 1) -> None:
        """Refuse up front what the queue would refuse, before anything is stored or shown publicly."""
        self.queue.check(owner, count)

    # -- starting ----------------------------------------------------------------------------------

    async def start(
        self,
        interaction: discord.Interaction,
        request: GenerationRequest,
        *,
        kind: str,
        parent_image_id: int | None = None,
        ephemeral: bool = False,
        followup: bool = False,
    ) -> Job | None:
        """Store, show and queue one job for whoever is behind `interaction`.

        The interaction must already be answered (deferred); its response becomes the job's
        message, or with `followup` a new followup message does. Returns None when the queue
        refused it (the user has been told).
        """
        user = interaction.user
        channel_id = interaction.channel_id
        job = await self.storage.create_job(
            user.id,
            request,
            kind=kind,
            parent_image_id=parent_image_id,
            guild_id=interaction.guild_id,
            channel_id=channel_id,
            private=ephemeral,
        )
        mentions = discord.AllowedMentions(users=[user])
        if followup:
            sent = await interaction.followup.send(
                self.content(job, waiting_status(1)), ephemeral=ephemeral, wait=True, allowed_mentions=mentions
            )
        else:
            interaction.extras[ORIGINAL_USED] = True
            sent = await interaction.original_response()
        await self.storage.set_message(job.id, sent.channel.id, sent.id)
        message = JobMessage(
            self.bot, user.id, sent.channel.id, sent.id, interaction, original=not followup, ephemeral=ephemeral
        )
        try:
            position = self.queue.submit(QueuedJob(job.id, owner=user.id, payload=message))
        except QueueFull as error:
            await self.storage.fail_job(job.id, str(error))
            await message.edit(content=self.content(job, f"\n❌ {error}"), view=None)
            return None
        await self._show_waiting(job, message, position)
        return job

    async def _show_waiting(self, job: Job, message: JobMessage, position: int, note: str = "") -> None:
        # Always edited at once, even when the job starts right away: a deferred response's
        # "thinking…" must be settled before any followup, or Discord turns that followup into it.
        place = Place(job, message, position, note)
        if position > 0:
            self.places[job.id] = place
        self._places_changed()  # a newcomer goes before the jobs of owners who were served already
        await self._show_place(place)

    async def _show_place(self, place: Place) -> None:
        try:
            await place.message.edit(
                while_waiting=True,
                content=self.content(place.job, place.note + waiting_status(place.position)),
                view=buttons.cancel_view(place.job.id),
            )
        except discord.HTTPException:
            log.warning("could not show job %s as waiting", place.job.id, exc_info=True)

    def _places_changed(self) -> None:
        """Jobs were queued, started or cancelled: have the waiting messages catch up."""
        if self._places_task is None or self._places_task.done():
            self._places_task = asyncio.get_running_loop().create_task(self._update_places(), name="imagine-places")

    async def _update_places(self) -> None:
        """Edit the waiting messages whose place in the queue changed.

        One edit at a time, and one round per `progress_interval` at most, so each message is
        edited at most once per interval however busy the queue is; a change during a round or
        a wait is picked up by the next round.
        """
        while not self.queue.closed:
            order = {queued.job_id: number for number, queued in enumerate(self.queue.waiting(), start=1)}
            for job_id in [job_id for job_id in self.places if job_id not in order]:
                del self.places[job_id]  # started or cancelled
            moved = [(place, order[job_id]) for job_id, place in self.places.items() if place.position != order[job_id]]
            if not moved:
                return
            wait = self._places_edited + self.config.progress_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            self._places_edited = time.monotonic()
            for place, position in moved:
                if self.places.get(place.job.id) is place:  # not started or cancelled meanwhile
                    place.position = position
                    await self._show_place(place)

    # -- work from outside Discord ---------------------------------------------------------------

    def submit_work(self, job_id: str, owner: str, work: Callable[[], Awaitable[None]]) -> int:
        """Queue work that is not a Discord job (the HTTP image API's generations).

        It takes turns with everyone's jobs under the same rules and limits (QueueFull as for
        `submit`), and the waiting messages count it, but it has no message and no stored row:
        `work()` runs itself and answers its own caller. Returns its place, as `submit` does.
        """
        position = self.queue.submit(QueuedJob(job_id, owner=owner, payload=work))
        self._places_changed()  # the jobs it went before are one place further back
        return position

    def cancel_work(self, job_id: str) -> None:
        if self.queue.cancel(job_id):
            self._places_changed()

    # -- running -----------------------------------------------------------------------------------

    async def _run(self, queued: QueuedJob) -> None:
        if not isinstance(queued.payload, JobMessage):  # work from outside Discord: see submit_work
            self._places_changed()
            await queued.payload()
            return
        message: JobMessage = queued.payload
        self.places.pop(int(queued.job_id), None)
        self._places_changed()  # everyone behind it moved up
        try:
            job = await self.storage.get_job(int(queued.job_id))
        except ImagineError as error:  # its stored request cannot be read back (a file is gone)
            await self.storage.fail_job(int(queued.job_id), str(error))
            with contextlib.suppress(discord.HTTPException):
                await message.edit(content=f"❌ {error}", attachments=[], view=None)
            return
        if job is None or job.finished:
            return
        try:
            await self.storage.mark_running(job.id)
        except ImagineError:
            log.info("job %s ended before it could start", job.id)
            return
        async with message.lock:
            message.done_waiting = True
        with contextlib.suppress(discord.HTTPException):
            await message.edit(content=self.content(job, progress_status(0, 1)), view=buttons.cancel_view(job.id))
        progressor = Progressor(message, lambda status: self.content(job, status), self.config.progress_interval)
        label = kind_label(job.kind, job.request.strength)
        try:
            if job.kind == "single":
                result, index = await self._decode_single(job)
                results, label = [result], f"Image #{index + 1}"
            else:
                results = await self.engine.generate(job.request, progressor, preview=True)
            filtered = [r for r in results if FinishReason(r.finish_reason) is FinishReason.FILTERED]
            if filtered and self.config.filtered == "refuse":
                raise ContentFiltered("The image was flagged as unsafe by the content filter and is not shown.")
            grid = await asyncio.to_thread(grid_png, results) if len(results) > 1 else None
            records = await self.storage.finish_job(job.id, results, grid)
        except asyncio.CancelledError:
            await progressor.finish()
            if job.id not in self.user_cancelled:
                raise  # shutting down: the job stays unfinished in storage and resumes at the next start
            await self._end(job, message, "cancelled", "(cancelled)")
            return
        except ImagineError as error:
            await progressor.finish()
            await self._end(job, message, "failed", f"\n❌ {error}", str(error))
            return
        except Exception:
            log.exception("job %s failed", job.id)
            await progressor.finish()
            reason = "The engine failed on this job; the error has been logged. Press 🔄 to try again."
            await self._end(job, message, "failed", f"\n❌ {reason}", reason)
            return
        finally:
            self.user_cancelled.discard(job.id)
        await progressor.finish()
        # The results are stored: a ❌ arriving now must not stop them from being shown.
        await asyncio.shield(self._post(job, message, results, records, label=label, spoiler=bool(filtered), grid=grid))

    async def _decode_single(self, job: Job) -> tuple[ImageResult, int]:
        """U1-U4: the parent image decoded again at full quality from its stored latents; and its place."""
        if job.parent_image_id is None:
            raise ImagineError("This job has no image to decode.")
        record = await self.storage.get_image(job.parent_image_id)
        if record is None:
            raise ImagineError(f"Image #{job.parent_image_id} no longer exists.")
        stored = ImageResult(
            png=await self.storage.read_png(record),
            seed=record.seed,
            index=0,
            width=record.width,
            height=record.height,
            finish_reason=FinishReason(record.finish_reason),
            latents=await self.storage.read_latents(record),
            parameters=record.parameters,
        )
        png = await self.engine.decode_full(job.request, stored)
        return dataclasses.replace(stored, png=png), record.index

    async def _post(
        self,
        job: Job,
        message: JobMessage,
        results: list[ImageResult],
        records: list[Any],
        *,
        label: str | None,
        spoiler: bool,
        grid: bytes | None,
    ) -> None:
        data, name = await asyncio.to_thread(
            fit_upload, grid or results[0].png, file_name(job.request.prompt, job.id), message.upload_limit
        )
        file = discord.File(io.BytesIO(data), name, spoiler=spoiler)
        view = buttons.grid_view(job.id, len(records)) if len(records) > 1 else buttons.image_view(records[0].id)
        content = job_content(job.request, self.profile(job.request.model), job.user_id, label)
        try:
            await message.edit(content=content, attachments=[file], view=view)
        except discord.HTTPException:
            log.exception("could not post the result of job %s", job.id)

    async def _end(self, job: Job, message: JobMessage, status: str, note: str, error: str | None = None) -> None:
        """Record a failure or cancellation and show it, with 🔄 to try again."""
        if status == "cancelled":
            await self.storage.cancel_job(job.id)
        else:
            await self.storage.fail_job(job.id, error or "failed")
        try:
            await message.edit(content=self.content(job, note), attachments=[], view=buttons.retry_view(job.id))
        except discord.HTTPException:
            log.warning("could not show the end of job %s", job.id, exc_info=True)

    # -- cancelling and restarts -----------------------------------------------------------------

    async def cancel(self, interaction: discord.Interaction, job_id: int) -> None:
        """❌: only the owner may cancel; a waiting job ends here, a running one in its worker."""
        job = await self.storage.get_job(job_id)
        if job is None:
            raise ImagineError(f"Job #{job_id} does not exist.")
        if job.user_id != interaction.user.id:
            raise ImagineError("Only the person who started this job can cancel it.")
        if job.finished:
            raise ImagineError(f"Job #{job_id} has already ended ({job.status}).")
        if self.queue.position(job_id) == 0:
            self.user_cancelled.add(job_id)
            self.queue.cancel(job_id)
            await interaction.response.defer()
            return
        self.queue.cancel(job_id)
        await self.storage.cancel_job(job_id)
        place = self.places.pop(job_id, None)
        if place is not None:
            async with place.message.lock:  # after a position edit in flight, and before any other
                place.message.done_waiting = True
        self._places_changed()
        await interaction.response.edit_message(
            content=self.content(job, "(cancelled)"), attachments=[], view=buttons.retry_view(job.id)
        )

    async def resume(self) -> None:
        """After a start: run again what the last run left queued or running, or say it failed.

        Old interaction tokens are gone, so these messages are edited through the channel.
        """
        for job in await self.storage.unfinished_jobs():
            # An ephemeral message cannot be edited without its token: a private job goes to DMs.
            message = JobMessage(self.bot, job.user_id, job.channel_id, job.message_id, ephemeral=job.private)
            reason = None
            if not self.config.resume_jobs:
                reason = RESTART_FAILURE
            elif job.missing_files:
                reason = "The bot restarted and this job's image prompt is gone; it cannot run again."
            if reason is None:
                try:
                    position = self.queue.submit(QueuedJob(job.id, owner=job.user_id, payload=message), enforce_limits=False)
                except QueueFull as error:
                    reason = str(error)
                else:
                    log.info("resumed job %s at position %s", job.id, position)
                    await self._show_waiting(job, message, position, "(Resumed after a restart) ")
                    continue
            await self.storage.fail_job(job.id, reason)
            try:
                await message.edit(content=self.content(job, f"\n❌ {reason}"), attachments=[], view=buttons.retry_view(job.id))
            except discord.HTTPException:
                log.warning("could not show that job %s failed at restart", job.id, exc_info=True)

    async def close(self) -> None:
        await self.queue.close()
        if self._places_task is not None and not self._places_task.done():
            self._places_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._places_task
